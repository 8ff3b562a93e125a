"""Non-interactive check, for `gdb -batch` (the `ftrace-int3 check` command;
scripts/ftrace-int3-check uses it):

    gdb -batch -nx VMLINUX -x gdb-ftrace.py -ex 'ftrace-int3 check 127.0.0.1:1234 --json ev.jsonl'

Connects (retrying while QEMU starts), finds the running kernel (KASLR slide,
and proof that vmlinux is it: slide.py; with --wait-kernel it lets a guest
held at reset boot until its IDT is up), arms the checker, continues until the
guest powers off, the connection drops, --duration ends, or gdb gets SIGINT
(the driver's timeout or Ctrl-C), then closes the event log and either kills
the target or, with --detach, disarms and detaches, leaving the guest running.
Never raises: the JSON event log is the result.
"""

from __future__ import annotations

import threading
import time

import gdb

from ..core import engine as E
from ..core.errors import UserError
from ..core.eventlog import EventLog
from ..core.mode import CheckMode
from . import checker, kernel, slide, symbols
from .breakpoints import post_interrupt as _post_interrupt


def _say(msg: str) -> None:
    gdb.write(f"[gdb] {msg}\n")
    gdb.flush()


class _BareBreakpoint(gdb.Breakpoint):
    """A stop that does nothing: what gdb and QEMU cost per hit, without the checker."""

    def stop(self) -> bool:
        return False


def connect(target: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            gdb.execute(f"target remote {target}", to_string=True)
            return
        except gdb.error as e:
            if time.monotonic() > deadline:
                raise UserError(f"cannot connect to the gdbstub at {target}: {e}") from None
            time.sleep(0.2)


def _run_for(seconds: float) -> None:
    """Let the guest run for about `seconds` (no breakpoint of ours is in: nothing to step over)."""
    t = threading.Timer(seconds, _post_interrupt)
    t.start()
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error as e:
        raise UserError(f"the target went away while waiting for the kernel: {e}") from None
    finally:
        t.cancel()


def wait_for_kernel(timeout: float, poll: float = 0.3) -> None:
    """Run a guest held at reset until its kernel's int3 gate is up, then locate it.
    A gate in kernel text that never matches this vmlinux for 5 s is a wrong vmlinux."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    while True:
        try:
            slide.ensure()
            return
        except slide.NotUpYet as e:
            why = str(e)
            if e.runtime is not None:
                since = since or time.monotonic()
                if time.monotonic() - since > 5:
                    slide.refuse_unmatched(e.runtime)
        if time.monotonic() > deadline:
            raise UserError(f"the guest's kernel did not set up its IDT within {timeout:.0f} s ({why})")
        _run_for(poll)


class _Ender:
    """Ends the run at a point where gdb is not stepping: the next hit of a checker
    breakpoint becomes a real stop (BreakpointSet.halt), and gdb is interrupted in case
    nothing hits (nothing being patched). The interrupt is repeated: gdb passes one that
    arrives while it steps over a breakpoint to QEMU, which drops it. Fired by --duration,
    or by the driver creating --stop-file (its timeout and Ctrl-C: more reliable than a
    SIGINT to gdb, which can be lost the same way)."""

    def __init__(self, c: "checker.Checker | None", duration: float | None, stop_file: str | None) -> None:
        self.c, self.fired, self.why, self.timers, self.done = c, False, "", [], False
        if duration:
            self._timer(duration, lambda: self.fire("the duration ended"))
        if stop_file:
            w = threading.Thread(target=self._watch, args=(stop_file,), daemon=True)
            w.start()

    def _timer(self, delay: float, fn) -> None:
        t = threading.Timer(delay, fn)
        t.daemon = True
        t.start()
        self.timers.append(t)

    def _watch(self, path: str) -> None:
        import os

        while not self.done and not self.fired:
            if os.path.exists(path):
                self.fire("stopped by the driver (its timeout or Ctrl-C)")
            time.sleep(0.2)

    def fire(self, why: str) -> None:
        if self.fired or self.done:
            return
        self.fired, self.why = True, why
        if self.c is not None:
            self.c.bps.halt = True
        for delay in (1.0, 3.0, 6.0, 10.0):
            self._timer(delay, lambda: None if self.done else _post_interrupt())

    def cancel(self) -> None:
        self.done = True
        for t in self.timers:
            t.cancel()


_sigint = [False]  # a stop by SIGINT (Ctrl-C, the driver's timeout) was seen
_sigtrap = [False]  # the last stop was a SIGTRAP gdb matched to no breakpoint


def _on_stop(ev) -> None:
    _sigtrap[0] = isinstance(ev, gdb.SignalEvent) and ev.stop_signal == "SIGTRAP"
    if isinstance(ev, gdb.SignalEvent) and ev.stop_signal == "SIGINT":
        _sigint[0] = True


gdb.events.stop.connect(_on_stop)

INTERRUPTED = "interrupted (Ctrl-C or SIGINT)"


def drive(c: "checker.Checker | None", deadline: "_Ender | None" = None) -> str:
    """Continue the guest until it exits or stops for a reason that is not ours.

    The checker's real stops are where its breakpoints or watchpoints must be switched
    (the iretq of an emulated int3; the watch engine's return-slot and regs->cs
    watchpoints): sync them and continue. A SIGINT ends the loop wherever it lands: during a
    continue or inside a breakpoint's callback. Returns why the loop ended.
    """
    _sigint[0] = False
    if c is not None:
        c.bps.interrupted = False
        c.sync()  # what the guest's state wants since the last run
    # The watch engine: gdb keeps the watchpoints in QEMU across its real stops instead of
    # taking all of them out and back in at each: QEMU 7.2 keeps a vCPU's pending hit as a
    # pointer to its watchpoint, and a hit pending across a removal was lost (docs/cost.md).
    keep = c is not None and c.watch
    if keep:
        was = gdb.parameter("breakpoint always-inserted")
        gdb.execute("set breakpoint always-inserted on", to_string=True)
    try:
        while True:
            try:
                gdb.execute("continue", to_string=True)
            except gdb.error as e:
                return f"target gone: {e}"
            # Not inf.threads(): that asks the stub for its thread list (three round trips) at
            # every real stop; a gone target has no pid or no selected thread.
            if not gdb.selected_inferior().pid or gdb.selected_thread() is None:
                return "guest exited"
            if deadline is not None and deadline.fired:
                return deadline.why
            if c is not None and c.bps.tick and _sigint[0]:  # a hold's bound, not the user
                _sigint[0] = c.bps.tick = False
                c.stop("hold-tick")
                c.sync()
                continue
            if _sigint[0] or (c is not None and c.bps.interrupted):
                return INTERRUPTED
            if c is not None and _sigtrap[0] and c.stray_trap():
                c.sync()
                continue
            if c is not None and c.sync():
                continue
            return "guest stopped (interrupt or a stop that is not the checker's)"
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        if keep:
            try:
                gdb.execute(f"set breakpoint always-inserted {'on' if was else 'off'}", to_string=True)
            except gdb.error:
                pass


def run(target: str, json_path: str, mode: CheckMode, connect_timeout: float = 30.0, arm: bool = True,
        sample: int = 0, inject: str | None = None, stops_path: str | None = None, bare: bool = False,
        wait_kernel: bool = False, duration: float | None = None, detach: bool = False,
        stop_file: str | None = None, engine: str = E.DEFAULT.value, hold=None) -> None:
    """arm=False only attaches (no breakpoint), bare=True adds one Python breakpoint on the
    handler that does nothing: the baselines of scripts/bench-stops. wait_kernel: the
    guest is held at reset and boots with KASLR: run it until its kernel is up, then
    locate it. detach: leave the guest running at the end (a QEMU we did not start).
    The event log gets an 'armed' record once the checker is in, an 'error' record for
    whatever ended the check early (scripts/ftrace-int3-check reads those)."""
    gdb.execute("set pagination off")
    gdb.execute("set confirm off")
    log = EventLog(json_path)
    c = None
    bare_bp = None
    connected = False
    deadline = None
    try:
        kernel.info()  # resolve symbols from vmlinux before the guest runs
        connect(target, connect_timeout)
        connected = True
        _say(f"connected to {target}")
        if wait_kernel:
            _say("waiting for the guest's kernel to set up its IDT (KASLR: the slide is known then)")
            wait_for_kernel(max(connect_timeout, 60.0))
        else:
            try:
                slide.ensure()
            except slide.NotUpYet:
                pass  # held at reset: the guest boots at the link addresses (nokaslr)
        if slide.located is not None:
            _say(f"kernel located: {kernel.info().version or '?'}, slide {slide.located.describe()}")
        else:
            _say("guest at reset: arming at the vmlinux link addresses (the guest must boot with nokaslr)")
        if bare:
            bare_bp = _BareBreakpoint(f"*{kernel.info().handler:#x}", internal=True)
            _say(f"bare breakpoint on {kernel.info().handler_name}")
        if arm:
            c = checker.Checker(mode, log=log, sample=sample, inject=inject, stops_path=stops_path, engine=engine,
                                hold=symbols.hold_config(hold.hold, hold.hold_sites) if hold is not None else None)
            c.arm()
            checker.active = c
            f = c.facts
            log.armed(**E.armed_record(f, mode, c.engine_kind, inject))
            _say(f"armed on {', '.join(n for n, _ in f.handlers)} (mode {mode}"
                 + (f", injecting {inject}" if inject else "") + "); returns at "
                 + ", ".join(f"{r:#x}" for r in f.returns))
            if not f.dwarf:
                _say(f"vmlinux has no DWARF: {kernel.NO_DWARF[4:]}")
            _say(f"engine: {c.describe_engine()}")
            if c.hold is not None:
                _say(c.engine.hold.describe() if c.engine.hold else
                     f"coverage {c.engine.no_coverage}" if c.engine.no_coverage else
                     f"no hold here: {c.kinfo.hold_facts()[1]}")
        deadline = _Ender(c, duration, stop_file)
        if duration:
            _say(f"running for {duration:g} s")
        why = drive(c, deadline)
        if why.startswith("target gone"):
            log.error(why)
        _say(why + "; ending the check")
    except UserError as e:
        log.error(str(e))
        _say(f"error: {e}")
    finally:
        if deadline is not None:
            deadline.cancel()
        if c is not None:
            c.bps.halt = False
            inj = c.injector
            c.close()  # closes the event log too
            if inj is not None:
                _say(f"injection {inj.describe()}")
            stats = c.engine.stats() or {}
            _say(f"events={len(c.events)} checker_errors={len(c.errors)} engine={c.engine_kind} "
                 + " ".join(f"{k}={v}" for k, v in c.tracker.stats.to_json().items())
                 + "".join(f" {c.engine_kind}_{k}={v}" for k, v in stats.items()))
        else:
            log.close()
        if bare_bp is not None and bare_bp.is_valid():
            bare_bp.delete()
        _end(detach and connected)


def _end(detach: bool) -> None:
    """Kill the target (a QEMU the driver started), or detach and leave it running."""
    try:
        if not gdb.selected_inferior().pid:
            return
        if detach:
            gdb.execute("detach", to_string=True)
            _say("detached; the guest keeps running")
        else:
            gdb.execute("kill", to_string=True)
    except gdb.error as e:
        _say(f"{'detach' if detach else 'kill'} failed: {e}")
