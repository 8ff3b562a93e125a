"""The `ftrace-int3` command family: one class per subcommand, each declared once.

A subcommand declares its arguments on an argparse parser; its gdb help
(`help ftrace-int3 arm`) is built from that parser, options with their help
and defaults, as pwndbg's argparsed commands do. Every subcommand is
invoked the same way: parse, check the "armed" precondition if it has one,
run, and turn a UserError into a gdb error.
"""

from __future__ import annotations

import argparse
import collections

import gdb

from ..core import engine as E
from ..core import inject as core_inject
from ..core import mode as check_mode
from ..core import report, style
from ..core.cli import DefaultsHelpFormatter
from ..core.errors import UserError
from . import checker, kernel, symbols


class _HelpShown(Exception):
    pass


class _Formatter(DefaultsHelpFormatter):
    """Fixed width (help text must not depend on the terminal); 'Usage:' as gdb's own
    help says it."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=88, max_help_position=26)

    def add_usage(self, usage, actions, groups, prefix=None):
        super().add_usage(usage, actions, groups, prefix="Usage: " if prefix is None else prefix)


class _Parser(argparse.ArgumentParser):
    """argparse that reports to gdb instead of exiting gdb."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see: help {self.prog})")

    def exit(self, status=0, message=None):
        if message:
            gdb.write(message)
        raise _HelpShown()

    def print_help(self, file=None):
        gdb.write(self.format_help())


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _mode(text: str) -> check_mode.CheckMode:
    try:
        return check_mode.CheckMode.parse(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", type=_mode, default=check_mode.DEFAULT, metavar="{" + ",".join(check_mode.NAMES) + "}",
                   help="where to stop for each int3 (see below)")
    p.add_argument("--sample", type=_non_negative, default=0, metavar="N",
                   help="the int3 entry stop and the landing only for the first N int3s of each batch, "
                        "the handler checks for all (0: every int3)")
    p.add_argument("--engine", choices=E.NAMES, default=E.DEFAULT.value,
                   help="watch: read watchpoints only (v5.2+; v5.2 without dynamic ftrace falls back to "
                        "breakpoints and says "
                        "so); breakpoints: on the handler, its returns, the int3 entry (mode full) and the "
                        "iretq, several times dearer per int3 on QEMU < 10.2 (docs/cost.md)")
    p.add_argument("--hold", type=_non_negative, default=0, metavar="MS",
                   help="keep the patching vCPU stopped for up to MS ms once a batch's int3s are live (after "
                        "its first sync) while the other vCPU runs into them; ends early when every hold site "
                        "of the batch took an int3, or when the other vCPU waits on the held one (docs/hold.md)")
    p.add_argument("--hold-sites", default="", metavar="FUNC,...",
                   help="the functions whose batches are held and whose int3s the coverage counts "
                        "(default with --hold: every batch is held to its bound)")


MODES_EPILOG = "modes and engines (where the checker stops):\n" + "\n".join(
    "  " + line for line in E.describe_modes().splitlines())


class _Sub(gdb.Command):
    name = ""
    summary = ""  # the first help line (what `help ftrace-int3` lists)
    epilog = ""
    example = ""
    needs_armed = False
    command_class = gdb.COMMAND_DATA

    def __init__(self) -> None:
        self.parser = _Parser(prog=f"ftrace-int3 {self.name}", formatter_class=_Formatter, add_help=True,
                              epilog=self.epilog + (f"\nexample: {self.example}" if self.example else ""))
        self.arguments(self.parser)
        self.__doc__ = self.summary + "\n\n" + self.parser.format_help().rstrip()
        super().__init__(f"ftrace-int3 {self.name}", self.command_class)  # complete() below completes

    def arguments(self, p: argparse.ArgumentParser) -> None:
        pass

    def invoke(self, arg: str, from_tty: bool) -> None:
        try:
            args = self.parser.parse_args(gdb.string_to_argv(arg))
            c = checker.active
            if self.needs_armed and (c is None or not c.armed):
                raise UserError("ftrace-int3 is not armed: run 'ftrace-int3 arm' first")
            self.run(args, c)
        except _HelpShown:
            return
        except UserError as e:
            raise gdb.GdbError(str(e)) from None

    def run(self, args: argparse.Namespace, c: "checker.Checker | None") -> None:
        raise NotImplementedError

    def complete(self, text: str, word: str):
        """Complete from the argparse declaration: an option's fixed values after it, the
        positional's values, else the option names; a FILE argument completes as a file.
        gdb breaks words at '-' too, so the token is taken from `text` and each match is
        returned relative to gdb's `word`."""
        words = text.split()
        cur = "" if not words or text.endswith(" ") else words[-1]
        prev = (words[-1] if cur == "" else words[-2]) if len(words) > (0 if cur == "" else 1) else ""
        acts = {o: a for a in self.parser._actions for o in a.option_strings}
        act = acts.get(prev)
        if act is not None and act.nargs != 0:
            if act.metavar == "FILE":
                import glob  # noqa: PLC0415
                import os

                matches = sorted(m + ("/" if os.path.isdir(m) else "") for m in glob.glob(os.path.expanduser(cur) + "*"))
            else:
                matches = [str(v) for v in self.values(act) if str(v).startswith(cur)]
        elif cur.startswith("-"):
            matches = sorted(o for o in acts if o.startswith(cur))
        else:
            pos = [a for a in self.parser._actions if not a.option_strings]
            matches = [str(v) for a in pos for v in self.values(a) if str(v).startswith(cur)]
        cut = len(cur) - len(word or "")
        return [m[cut:] for m in matches]

    def values(self, act) -> list:
        if act.choices:
            return [getattr(v, "value", v) for v in act.choices]
        if act.dest == "mode":
            return list(check_mode.NAMES)
        return []


class FtraceInt3(gdb.Command):
    """Verify the int3 emulation of live x86_64 text patching (ftrace, jump labels, livepatch).

Usage: ftrace-int3 SUBCOMMAND [ARGS]   (help ftrace-int3 SUBCOMMAND for each)

A typical session, attached to QEMU's gdbstub with the kernel's vmlinux loaded:
  (gdb) ftrace-int3 arm --json /tmp/events.jsonl
  (gdb) ftrace-int3 run     # make the guest patch text, then Ctrl-C
  (gdb) ftrace-int3 report
For gdb -batch: ftrace-int3 check HOST:PORT --json FILE.
'ftrace-int3 inject MODE' reproduces a fixed bug so you can see the checker catch it."""

    def __init__(self) -> None:
        super().__init__("ftrace-int3", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, prefix=True)


class Info(_Sub):
    name = "info"
    summary = "Show which int3 text-patch handler, callers, batch descriptor and layouts this kernel has."
    epilog = ("Detection is by symbols and DWARF types (poke_int3_handler / smp_text_poke_int3_handler,\n"
              "bp_desc / text_poke_array, struct text_poke_loc), never by version number.")
    example = "ftrace-int3 info"

    def run(self, args, c) -> None:
        from tabulate import tabulate

        from . import slide

        kernel.info()  # a vmlinux with a text-patch handler, or a clear error
        try:
            where = slide.ensure().describe() if slide.connected() else "unknown: not connected to a target"
        except slide.NotUpYet as e:
            where = f"unknown: the kernel is not up ({e})"
        except gdb.error as e:
            where = f"unknown: {e}"
        rows = kernel.info().describe()
        rows.insert(1, ("slide", where))
        gdb.write(tabulate(rows, tablefmt="plain") + "\n")


class Arm(_Sub):
    name = "arm"
    summary = "Start checking every int3 the kernel's text-patch handler takes."
    epilog = ("Puts the engine's watchpoints (or breakpoints) in; every entry into the handler becomes\n"
              "one event with one verdict. Re-arming starts a new event list. Resume with\n"
              "'ftrace-int3 run' (it handles the checker's own real stops); only mode handler with\n"
              "--engine breakpoints also works with 'continue'.\n\n" + MODES_EPILOG)
    example = "ftrace-int3 arm --mode handler --json /tmp/ftrace-int3.jsonl"
    command_class = gdb.COMMAND_BREAKPOINTS

    def arguments(self, p) -> None:
        _add_mode(p)
        p.add_argument("--json", metavar="FILE", help="append one JSON object per event to FILE as events complete")
        p.add_argument("--stops", metavar="FILE", help="append every stop the checker reads to FILE "
                       "(a stream core.tracker replays; for tests and bug reports)")
        p.add_argument("--echo", action="store_true", help="print one line per event as it completes")

    def run(self, args, old) -> None:
        from . import slide

        if old is not None:
            old.close()
        kernel.info()
        try:
            if not slide.connected():
                raise slide.NotUpYet("not connected")
            loc = slide.ensure()
            gdb.write(f"ftrace-int3: kernel located, slide {loc.describe()}\n")
        except slide.NotUpYet:
            gdb.write("ftrace-int3: the guest's kernel is not up yet (reset or early boot): arming at the "
                      "vmlinux link addresses, so it must boot with nokaslr\n")
        from ..core.eventlog import EventLog

        try:
            log = EventLog(args.json) if args.json else None
            c = checker.Checker(args.mode, log=log, echo=args.echo, sample=args.sample,
                                stops_path=args.stops, engine=args.engine,
                                hold=symbols.hold_config(args.hold, args.hold_sites))
        except OSError as e:
            raise UserError(f"cannot open the log: {e}") from None
        c.arm()
        checker.active = c
        k, where = c.kinfo, E.stops(args.mode, c.engine_kind)
        if log:
            log.armed(**E.armed_record(c.facts, args.mode, c.engine_kind, None))
        gdb.write(f"ftrace-int3: armed ({args.mode}) on {k.handler_name} ({k.handler:#x}) and "
                  f"{len(k.returns)} return point(s); batch from {k.desc_name}"
                  + (f"; events -> {args.json}" if args.json else "") + "\n")
        gdb.write(f"ftrace-int3: engine {c.describe_engine()}\n")
        gdb.write(f"ftrace-int3: {where.describe()}\n")
        if c.watch or args.mode.follows_landing:
            gdb.write("ftrace-int3: resume with 'ftrace-int3 run' (not 'continue'): the checker's points "
                      "come and go at real stops that it handles for you\n")


class Run(_Sub):
    name = "run"
    summary = "Resume the guest with the checker armed, through its own real stops, until Ctrl-C."
    epilog = ("Like 'continue', but when the checker stops for real to switch its breakpoints or\n"
              "watchpoints (engine watch: each int3's return slot and regs->cs; engine breakpoints:\n"
              "the iretq of an emulated int3 in modes landing/full) it does so and resumes, printing\n"
              "nothing for those stops. On a terminal one status line\n"
              "(int3s, verdict counts, the last site) is redrawn in place. Returns when the guest\n"
              "exits, gdb is interrupted (Ctrl-C) or the guest stops for a reason of its own.")
    example = "ftrace-int3 run"
    needs_armed = True
    command_class = gdb.COMMAND_RUNNING

    def run(self, args, c) -> None:
        from . import interactive, runner

        line = interactive.status_line(c, interactive.terminal())
        try:
            why = runner.drive(c)
        finally:
            line.close()
        gdb.write(f"ftrace-int3: {why}; {line.text()[len('[ftrace-int3] '):]} "
                  f"({len(c.events)} event(s) in all; 'ftrace-int3 report', 'ftrace-int3 show N')\n")


class Inject(_Sub):
    name = "inject"
    summary = "Reproduce a fixed text-patching bug in the live guest, to see the checker catch it."
    epilog = ("Applies to the int3s the armed checker sees from now on; every change to kernel text is\n"
              "undone by 'ftrace-int3 inject off', 'disarm', or when the check ends. Faults:\n"
              + "\n".join(f"  {m:<13} {h}" for m, h in core_inject.INJECTION_HELP.items()))
    example = "ftrace-int3 inject skip-call"
    needs_armed = True
    choices = core_inject.INJECTIONS + ("off",)

    def arguments(self, p) -> None:
        p.add_argument("fault", choices=self.choices, help="the bug to reproduce, or off")

    def run(self, args, c) -> None:
        old = c.injector
        for line in c.set_injection(None if args.fault == "off" else args.fault):
            gdb.write(f"ftrace-int3: {line}\n")
        if old is not None:
            gdb.write(f"ftrace-int3: injection {old.describe()}; stopped\n")
        if args.fault != "off":
            gdb.write(f"ftrace-int3: injecting {args.fault} from the next int3 on\n")


class Disarm(_Sub):
    name = "disarm"
    summary = "Stop checking: remove the checker's breakpoints, keep the events for `report`."
    example = "ftrace-int3 disarm"
    needs_armed = True
    command_class = gdb.COMMAND_BREAKPOINTS

    def run(self, args, c) -> None:
        c.close()
        gdb.write(f"ftrace-int3: disarmed; {len(c.events)} event(s) kept for 'ftrace-int3 report'\n")


class Status(_Sub):
    name = "status"
    summary = "Say whether the checker is armed, how, on which kernel, and the events so far by verdict."
    example = "ftrace-int3 status"

    def run(self, args, c) -> None:
        from tabulate import tabulate

        from ..core.verdict import verdict_class
        from . import slide

        rows = [("armed", "no" if c is None or not c.armed else "yes")]
        if c is not None:
            k = c.kinfo
            rows += [("mode", f"{c.mode}" + (f", sample {c.tracker.sample}" if c.tracker.sample else "")),
                     ("engine", c.describe_engine()),
                     ("kernel", f"{k.version or '?'}, era {k.era} ({', '.join(n for n, _ in k.handlers)})"),
                     ("slide", slide.located.describe() if slide.located else "not located (armed at link addresses)"),
                     ("injection", c.injector.describe() if c.injector else "none"),
                     ("event log", c.log.path if c.log is not None else "-")]
            counts = collections.Counter(ev.verdict for ev in c.events)
            by_class = collections.Counter(verdict_class(v) for v in counts.elements())
            rows.append(("events", f"{len(c.events)}: " + (", ".join(f"{v} {n}" for v, n in counts.most_common())
                                                            or "none yet")))
            rows.append(("open", f"{len(c.tracker.open_events())} (taken, not finished)"))
            rows.append(("so far", "FAIL" if by_class["failed"] or by_class["missed"] else
                         "ok" if by_class["verified"] else "nothing verified yet"))
        else:
            rows.append(("next", "ftrace-int3 arm (help ftrace-int3 arm)"))
        gdb.write(tabulate(rows, tablefmt="plain") + "\n")


class Show(_Sub):
    name = "show"
    summary = "Show one event in full: the site disassembled, pt_regs before and after, the gap, the verdict."
    epilog = ("ROW is a row number of 'ftrace-int3 report' (its # column): the row's first failed\n"
              "event, else its first event. --failed: the first FAIL-class or MISSED event. --seq N:\n"
              "event number N (the #N in the explanations). Old bytes and the batch's new bytes are\n"
              "disassembled with objdump; colours on a terminal when gdb's styling is on.")
    example = "ftrace-int3 show 1"

    def arguments(self, p) -> None:
        p.add_argument("row", nargs="?", type=int, metavar="ROW", help="a row number of the report")
        p.add_argument("--failed", action="store_true", help="the first failed or missed event")
        p.add_argument("--seq", type=int, metavar="N", help="event #N")
        p.add_argument("--json", metavar="FILE", help="read the events from this event log")

    def values(self, act) -> list:
        if act.dest == "row":
            c = checker.active
            return list(range(1, len(report.group_rows(c.events)) + 1)) if c is not None else []
        return super().values(act)

    def run(self, args, c) -> None:
        from ..core import show
        from ..core.disasm import objdump_bytes
        from ..core.verdict import verdict_class
        from . import interactive

        if args.json:
            try:
                events, _meta = report.load_events(args.json)
            except OSError as e:
                raise UserError(f"cannot read {args.json}: {e}") from None
        elif c is not None:
            events = c.events
        else:
            raise UserError("no events: run 'ftrace-int3 arm' first (or give --json FILE)")
        if not events:
            raise UserError("no finished events yet")
        row, same = None, 1
        if args.seq is not None:
            ev = next((e for e in events if e.seq == args.seq), None)
            if ev is None:
                raise UserError(f"no event #{args.seq} (events #{events[0].seq}..#{events[-1].seq})")
        elif args.failed:
            ev = next((e for e in events if verdict_class(e.verdict) in ("failed", "missed")), None)
            if ev is None:
                raise UserError(f"no failed or missed event among {len(events)}")
        elif args.row is not None:
            try:
                _r, evs = report.row_events(events, args.row)
            except IndexError as e:
                raise UserError(str(e)) from None
            ev = next((e for e in evs if verdict_class(e.verdict) in ("failed", "missed")), evs[0])
            row, same = args.row, len(evs)
        else:
            raise UserError("which event? give a report ROW, --failed or --seq N")
        if row is None:
            key = report.row_key(ev)
            rows = report.group_rows(events)
            row = next((i for i, r in enumerate(rows, 1) if tuple(r[:report.COL_COUNT]) == key), None)
            same = rows[row - 1][report.COL_COUNT] if row else 1
        on = interactive.terminal()
        style.set_enabled(on)
        gdb.write("\n".join(show.render(ev, row, objdump_bytes, interactive.highlighter(), same)) + "\n")


class Report(_Sub):
    name = "report"
    summary = "Print the events so far: the table grouped by site and verdict, explanations, the summary."
    epilog = ("Reads the current checker's events, or the JSON event log FILE written by `arm --json`\n"
              "(for instance after a crash). The same report as scripts/ftrace-int3-check prints,\n"
              "but without the guest's read counts (the last line says 'ftrace-int3 report:').")
    example = "ftrace-int3 report --json /tmp/ftrace-int3.jsonl"

    def arguments(self, p) -> None:
        p.add_argument("--json", metavar="FILE", help="read the events from this event log")
        p.add_argument("--rows", type=_non_negative, default=report.DEFAULT_ROWS, metavar="N",
                       help="table rows at most; FAIL and MISSED rows are always shown (0: all)")

    def run(self, args, c) -> None:
        from . import interactive

        style.set_enabled(interactive.terminal())
        if args.json:
            try:
                events, meta = report.load_events(args.json)
            except OSError as e:
                raise UserError(f"cannot read {args.json}: {e}") from None
            problems, coverage = report.checker_problems(meta), meta.get("coverage")
        elif c is not None:
            from .guest import tools

            events, meta = c.events + c.tracker.open_events(), {"tools": tools()}
            problems, coverage = report.checker_problems({"errors": c.errors}), c.engine.coverage()
        else:
            raise UserError("no events: run 'ftrace-int3 arm' first (or give --json FILE)")
        lines, summary = report.render(events, problems=problems, rows=args.rows)
        cov, used = report.coverage_line(coverage), report.tools_line(meta)
        gdb.write("\n".join(([used] if used else []) + lines + ([cov] if cov else [])) + "\n" + summary.line() + "\n")


class Check(_Sub):
    name = "check"
    summary = "Connect to a gdbstub, arm, run until the guest exits or gdb is interrupted (for gdb -batch)."
    epilog = ("Retries the connection while QEMU starts. At the end it closes the event log (the\n"
              "result: read it with 'ftrace-int3 report --json FILE') and kills the target.\n" + MODES_EPILOG)
    example = "gdb -batch -nx vmlinux -x gdb-ftrace.py -ex 'ftrace-int3 check 127.0.0.1:1234 --json ev.jsonl'"
    command_class = gdb.COMMAND_RUNNING

    def arguments(self, p) -> None:
        p.add_argument("target", metavar="HOST:PORT", help="QEMU's gdbstub")
        p.add_argument("--json", metavar="FILE", required=True, help="the event log to write")
        _add_mode(p)
        p.add_argument("--inject", choices=core_inject.INJECTIONS, help="reproduce a fixed bug (see: help "
                       "ftrace-int3 inject)")
        p.add_argument("--stops", metavar="FILE", help="also record every stop to FILE (see: help ftrace-int3 arm)")
        p.add_argument("--connect-timeout", type=float, default=30.0, metavar="S", help="seconds to retry connecting")
        p.add_argument("--no-arm", dest="arm", action="store_false",
                       help="only attach and run, no breakpoint (the baseline of scripts/bench-stops)")
        p.add_argument("--bare-breakpoint", action="store_true",
                       help="with --no-arm: one Python breakpoint on the handler whose stop() returns False "
                            "(what a stop costs with no checker work; scripts/bench-stops)")
        p.add_argument("--wait-kernel", action="store_true",
                       help="the guest is held at reset (QEMU -S) and boots with KASLR: let it boot until its "
                            "IDT is set up, find the slide, then arm")
        p.add_argument("--duration", type=float, metavar="S",
                       help="end the check after S seconds (default: when the guest exits or on SIGINT)")
        p.add_argument("--stop-file", metavar="FILE",
                       help="end the check (as --duration does) as soon as FILE exists: how a driver stops it")
        p.add_argument("--detach", action="store_true",
                       help="at the end disarm and detach, leaving the guest running (a QEMU you started); "
                            "default: kill the target")

    def run(self, args, c) -> None:
        from . import runner

        runner.run(args.target, args.json, args.mode, connect_timeout=args.connect_timeout, arm=args.arm,
                   sample=args.sample, inject=args.inject, stops_path=args.stops, bare=args.bare_breakpoint,
                   wait_kernel=args.wait_kernel, duration=args.duration, detach=args.detach,
                   stop_file=args.stop_file, engine=args.engine, hold=args)


SUBCOMMANDS = (Info, Arm, Run, Status, Inject, Disarm, Report, Show, Check)


def register() -> None:
    FtraceInt3()
    for sub in SUBCOMMANDS:
        sub()
