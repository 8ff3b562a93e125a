"""The `ftrace-int3` command family (a gdb prefix command, one class per subcommand)."""

from __future__ import annotations

import argparse

import gdb

from ..core import report, style
from ..core.errors import UserError
from . import checker, kernel


class _Parser(argparse.ArgumentParser):
    """argparse that raises gdb.GdbError instead of exiting gdb."""

    def error(self, message):
        raise gdb.GdbError(f"{self.prog}: {message} (see: help {self.prog})")

    def exit(self, status=0, message=None):
        if message:
            gdb.write(message)
        raise gdb.GdbError("") if status else _HelpShown()


class _HelpShown(Exception):
    pass


def _parse(parser: _Parser, arg: str):
    try:
        return parser.parse_args(gdb.string_to_argv(arg))
    except _HelpShown:
        return None


def _user_errors(fn):
    def wrapper(self, arg, from_tty):
        try:
            return fn(self, arg, from_tty)
        except UserError as e:
            raise gdb.GdbError(str(e)) from None
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _color_from_gdb() -> None:
    try:
        on = gdb.parameter("style enabled")
    except (gdb.error, RuntimeError):
        on = True
    import sys

    style.set_enabled(bool(on) and sys.stdout.isatty())


class FtraceInt3(gdb.Command):
    """Verify the int3 emulation of live x86_64 text patching (ftrace, jump labels, livepatch).

Usage: ftrace-int3 SUBCOMMAND [ARGS]

Subcommands: info, arm, run, inject, disarm, report. A typical session, attached to
QEMU's gdbstub with the kernel's vmlinux loaded:
  (gdb) ftrace-int3 arm --mode full --json /tmp/events.jsonl
  (gdb) ftrace-int3 run     # make the guest patch text, then Ctrl-C
  (gdb) ftrace-int3 report
With --mode handler plain `continue` works as well. 'ftrace-int3 inject MODE'
reproduces a fixed bug so you can see the checker catch it."""

    def __init__(self):
        super().__init__("ftrace-int3", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, prefix=True)


class FtraceInt3Info(gdb.Command):
    """Show which int3 text-patch handler, callers, batch descriptor and layouts this kernel has.

Usage: ftrace-int3 info

Detection is by symbols and DWARF types (poke_int3_handler / smp_text_poke_int3_handler,
bp_desc / text_poke_array, struct text_poke_loc), never by version number.
Example: ftrace-int3 info"""

    def __init__(self):
        super().__init__("ftrace-int3 info", gdb.COMMAND_DATA)

    @_user_errors
    def invoke(self, arg, from_tty):
        if arg.strip():
            raise gdb.GdbError("ftrace-int3 info takes no arguments")
        from tabulate import tabulate

        gdb.write(tabulate(kernel.info().describe(), tablefmt="plain") + "\n")


class FtraceInt3Arm(gdb.Command):
    """Start checking every int3 the kernel's text-patch handler takes.

Usage: ftrace-int3 arm [--mode handler|landing|full] [--json FILE] [--echo]

Sets internal breakpoints; every entry into the handler becomes one event
with one verdict. Re-arming starts a new event list.
  --mode handler  the handler's entry and return (2 stops per int3); the CPU's
                  frame is read from the words the gap leaves above pt_regs
  --mode landing  + follow each emulated int3 through iretq to the first
                  instruction it lands on (+2 stops; needs 'ftrace-int3 run')
  --mode full     + the int3 entry (asm_exc_int3), where the CPU's frame is
                  read before the entry code copies it (+1 stop) (default)
  --json FILE     append one JSON object per event to FILE as events complete
  --echo          print one line per event as it completes (slow guests only)
Example: ftrace-int3 arm --mode handler --json /tmp/ftrace-int3.jsonl"""

    parser = _Parser(prog="ftrace-int3 arm", add_help=True)
    parser.add_argument("--mode", choices=checker.MODES, default="full")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--echo", action="store_true")

    def __init__(self):
        super().__init__("ftrace-int3 arm", gdb.COMMAND_BREAKPOINTS, gdb.COMPLETE_FILENAME)

    @_user_errors
    def invoke(self, arg, from_tty):
        args = _parse(self.parser, arg)
        if args is None:
            return
        old = checker.current()
        if old is not None:
            old.close()
        try:
            c = checker.Checker(json_path=args.json, echo=args.echo, mode=args.mode)
        except OSError as e:
            raise gdb.GdbError(f"cannot open the event log: {e}") from None
        c.arm()
        checker.set_current(c)
        k = c.kinfo
        gdb.write(f"ftrace-int3: armed ({args.mode}) on {k.handler_name} ({k.handler:#x}) and "
                  f"{len(k.returns)} return point(s); batch from {k.desc_name}"
                  + (f"; int3 entry {k.entry_name}" if args.mode == "full" else "")
                  + (f"; events -> {args.json}" if args.json else "") + "\n")
        if args.mode != "handler":
            gdb.write("ftrace-int3: resume with 'ftrace-int3 run' (not 'continue'): following a landing "
                      "needs real stops that it steps over for you\n")


class FtraceInt3Run(gdb.Command):
    """Resume the guest with the checker armed, stepping over its landing stops, until Ctrl-C.

Usage: ftrace-int3 run

Like 'continue', but when the checker stops at the iretq of an emulated int3
(--mode landing/full) it single-steps that vCPU (the others stay stopped),
records where it landed, and resumes. Returns when the guest exits, gdb is
interrupted (Ctrl-C) or the guest stops for a reason of its own.
Example: ftrace-int3 run"""

    def __init__(self):
        super().__init__("ftrace-int3 run", gdb.COMMAND_RUNNING)

    def invoke(self, arg, from_tty):
        from . import runner

        if arg.strip():
            raise gdb.GdbError("ftrace-int3 run takes no arguments")
        c = checker.current()
        if c is None or not c.armed:
            raise gdb.GdbError("ftrace-int3 is not armed: run 'ftrace-int3 arm' first")
        why = runner.drive(c)
        gdb.write(f"ftrace-int3: {why}; {len(c.events)} event(s) so far ('ftrace-int3 report')\n")


class FtraceInt3Inject(gdb.Command):
    """Reproduce a fixed text-patching bug in the live guest, to see the checker catch it.

Usage: ftrace-int3 inject skip-call|wrong-return|no-gap|late-int3|off

Applies to the int3s the armed checker sees from now on; every change to
kernel text is undone by 'ftrace-int3 inject off', 'disarm', or when the
check ends. Modes:
  skip-call     the pre-seed handler: a CALL being installed is skipped
                (regs->ip = site + 5, nothing pushed)  -> WRONG-TARGET
  wrong-return  the emulated CALL pushes site + 8; repaired after the
                landing is seen (MODE landing/full)    -> WRONG-RETURN
  no-gap        the int3 entry makes no gap (its jnz becomes a jmp); the
                guest usually dies soon after           -> GAP-VIOLATION
  late-int3     an int3 reappears at an ftrace call site after its batch;
                put back when taken                     -> MISSED
Example: ftrace-int3 inject skip-call"""

    def __init__(self):
        super().__init__("ftrace-int3 inject", gdb.COMMAND_DATA)

    @_user_errors
    def invoke(self, arg, from_tty):
        from ..core.inject import MODES
        from .inject import Injector

        mode = arg.strip()
        if mode not in MODES + ("off",):
            raise gdb.GdbError(f"ftrace-int3 inject: one of {', '.join(MODES)}, off (see: help ftrace-int3 inject)")
        c = checker.current()
        if c is None or not c.armed:
            raise gdb.GdbError("ftrace-int3 is not armed: run 'ftrace-int3 arm' first")
        if c.injector is not None:
            for line in c.restore():
                gdb.write(f"ftrace-int3: {line}\n")
            gdb.write(f"ftrace-int3: injection {c.injector.describe()}; stopped\n")
            c.injector = None
        if mode != "off":
            c.injector = Injector(mode, c.kinfo)
            gdb.write(f"ftrace-int3: injecting {mode} from the next int3 on\n")


class FtraceInt3Disarm(gdb.Command):
    """Stop checking: remove the checker's breakpoints, keep the events for `report`.

Usage: ftrace-int3 disarm
Example: ftrace-int3 disarm"""

    def __init__(self):
        super().__init__("ftrace-int3 disarm", gdb.COMMAND_BREAKPOINTS)

    def invoke(self, arg, from_tty):
        c = checker.current()
        if c is None or not c.armed:
            raise gdb.GdbError("ftrace-int3 is not armed")
        c.close()
        gdb.write(f"ftrace-int3: disarmed; {len(c.events)} event(s) kept for 'ftrace-int3 report'\n")


class FtraceInt3Report(gdb.Command):
    """Print the events so far as a table grouped by site, instruction, target and verdict.

Usage: ftrace-int3 report [--json FILE]

Reads the current checker's events, or the JSON event log FILE written by
`arm --json` (for instance after a crash). FAIL-class and MISSED verdicts are
explained with expected vs. seen values; the last line counts each class.
Example: ftrace-int3 report --json /tmp/ftrace-int3.jsonl"""

    parser = _Parser(prog="ftrace-int3 report", add_help=True)
    parser.add_argument("--json", metavar="FILE")

    def __init__(self):
        super().__init__("ftrace-int3 report", gdb.COMMAND_DATA, gdb.COMPLETE_FILENAME)

    def invoke(self, arg, from_tty):
        args = _parse(self.parser, arg)
        if args is None:
            return
        _color_from_gdb()
        if args.json:
            try:
                events, _meta = report.load_events(args.json)
            except OSError as e:
                raise gdb.GdbError(f"cannot read {args.json}: {e}") from None
            errors = []
        else:
            c = checker.current()
            if c is None:
                raise gdb.GdbError("no events: run 'ftrace-int3 arm' first (or give --json FILE)")
            events = c.events + [ev for st in c.pending.values() for ev in st]
            errors = c.errors
        gdb.write(report.render_table(report.group_rows(events)) + "\n")
        for line in report.explanations(events):
            gdb.write(style.paint("fail", line) + "\n")
        for e in errors[:5]:
            gdb.write(style.paint("warn", f"checker error: {e}") + "\n")
        s = report.summarize(events, None, [])
        gdb.write(f"ftrace-int3: events={len(events)} verified={s.verified} failed={s.failed} "
                  f"missed={s.missed} other={s.other}\n")


def register() -> None:
    FtraceInt3()
    FtraceInt3Info()
    FtraceInt3Arm()
    FtraceInt3Run()
    FtraceInt3Inject()
    FtraceInt3Disarm()
    FtraceInt3Report()
