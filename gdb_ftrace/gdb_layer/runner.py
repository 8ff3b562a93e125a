"""Non-interactive check, for `gdb -batch` (scripts/ftrace-int3-check uses it).

    gdb -batch -nx VMLINUX -x gdb-ftrace.py \
        -ex 'python from gdb_ftrace.gdb_layer import runner; runner.run("127.0.0.1:1234", "ev.jsonl")'

Connects (retrying while QEMU starts), arms the checker, continues until the
guest powers off, the connection drops, or gdb gets SIGINT (the driver's
timeout), then closes the event log and prints the report. Never raises: the
JSON event log is the result.
"""

from __future__ import annotations

import time

import gdb

from ..core.errors import UserError
from . import checker, kernel


def _say(msg: str) -> None:
    gdb.write(f"[gdb] {msg}\n")
    gdb.flush()


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


def run(target: str, json_path: str, connect_timeout: float = 30.0, arm: bool = True) -> None:
    """arm=False only attaches (no breakpoint): the baseline of scripts/bench-stops."""
    gdb.execute("set pagination off")
    gdb.execute("set confirm off")
    c = None
    try:
        kernel.info()  # resolve symbols from vmlinux before the guest runs
        connect(target, connect_timeout)
        _say(f"connected to {target}")
        if arm:
            c = checker.Checker(json_path=json_path)
            c.arm()
            checker.set_current(c)
            _say(f"armed on {c.kinfo.handler_name}; returns at "
                 + ", ".join(f"{r:#x}" for _, r in c.kinfo.returns))
        while True:
            try:
                gdb.execute("continue", to_string=False)
            except gdb.error as e:
                _say(f"target gone: {e}")
                break
            inf = gdb.selected_inferior()
            if not inf.pid or not inf.threads():
                _say("guest exited")
                break
            _say("guest stopped (interrupt or unexpected stop); ending the check")
            break
    except UserError as e:
        _say(f"error: {e}")
    finally:
        if c is not None:
            c.close()
            _say(f"events={len(c.events)} checker_errors={len(c.errors)} "
                 f"unmatched_returns={c.unmatched_returns}")
        try:
            if gdb.selected_inferior().pid:
                gdb.execute("kill", to_string=True)
        except gdb.error:
            pass
