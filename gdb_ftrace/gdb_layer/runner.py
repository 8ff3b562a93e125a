"""Non-interactive check, for `gdb -batch` (the `ftrace-int3 check` command;
scripts/ftrace-int3-check uses it):

    gdb -batch -nx VMLINUX -x gdb-ftrace.py -ex 'ftrace-int3 check 127.0.0.1:1234 --json ev.jsonl'

Connects (retrying while QEMU starts), arms the checker, continues until the
guest powers off, the connection drops, or gdb gets SIGINT (the driver's
timeout), then closes the event log and prints the report. Never raises: the
JSON event log is the result.
"""

from __future__ import annotations

import time

import gdb

from ..core.errors import UserError
from ..core.mode import CheckMode
from . import checker, kernel


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


def drive(c: "checker.Checker | None") -> str:
    """Continue the guest until it exits or stops for a reason that is not ours.

    The checker's only real stops are the iretqs of emulated int3s (MODE=landing
    or full): step the vCPU over it (scheduler-locking: the other vCPUs stay
    put), record where it landed, and continue. Returns why the loop ended.
    """
    gdb.execute("set scheduler-locking step", to_string=True)
    while True:
        try:
            gdb.execute("continue", to_string=True)
        except gdb.error as e:
            return f"target gone: {e}"
        inf = gdb.selected_inferior()
        if not inf.pid or not inf.threads():
            return "guest exited"
        if c is not None and c.tracker.step_pending is not None:
            c.land()
            continue
        if c is not None and c.bps.sync():
            continue
        return "guest stopped (interrupt or a stop that is not the checker's)"


def run(target: str, json_path: str, mode: CheckMode, connect_timeout: float = 30.0, arm: bool = True,
        sample: int = 0, inject: str | None = None, stops_path: str | None = None, bare: bool = False) -> None:
    """arm=False only attaches (no breakpoint), bare=True adds one Python breakpoint on the
    handler that does nothing: the baselines of scripts/bench-stops."""
    gdb.execute("set pagination off")
    gdb.execute("set confirm off")
    c = None
    try:
        kernel.info()  # resolve symbols from vmlinux before the guest runs
        connect(target, connect_timeout)
        _say(f"connected to {target}")
        if bare:
            _BareBreakpoint(f"*{kernel.info().handler:#x}", internal=True)
            _say(f"bare breakpoint on {kernel.info().handler_name}")
        if arm:
            c = checker.Checker(mode, json_path=json_path, sample=sample, inject=inject, stops_path=stops_path)
            c.arm()
            checker.active = c
            _say(f"armed on {', '.join(n for n, _ in c.kinfo.handlers)} (mode {mode}"
                 + (f", injecting {inject}" if inject else "") + "); returns at "
                 + ", ".join(f"{r:#x}" for _, r in c.kinfo.returns))
        _say(drive(c) + "; ending the check")
    except UserError as e:
        _say(f"error: {e}")
    finally:
        if c is not None:
            c.close()
            if c.injector is not None:
                _say(f"injection {c.injector.describe()}")
            _say(f"events={len(c.events)} checker_errors={len(c.errors)} "
                 + " ".join(f"{k}={v}" for k, v in c.tracker.stats.to_json().items()))
        try:
            if gdb.selected_inferior().pid:
                gdb.execute("kill", to_string=True)
        except gdb.error:
            pass
