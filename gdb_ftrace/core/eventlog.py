"""The JSON-lines files a check writes, one object per line, flushed line by line
so that a crash of gdb, QEMU or the guest leaves everything up to it.

Event log (`arm --json FILE`; read back by report.load_events):
  {"record": "meta", ...}            the kernel, mode, injection; at close: errors, stats
  {"record": "handler_entry", ...}   an Int3Event at its handler entry (its return not seen yet)
  {"record": "event", ...}           a finished, judged Int3Event
  {"record": "followup", "seq": N, "kind": ..., ...}   a follow-up added after the event
  {"record": "armed", "handlers": [...], "engine": ..., "mode": ...}   the checker is in the guest
  {"record": "error", "message": ...}   why the check could not start or go on (gdb's side)
Stop stream (`arm --stops FILE`; replayed by core.engine.replay in the unit tests):
  {"stream": "raw", "facts": ..., "mode": ..., "engine": ...}   the first line (engine.header)
  {"at": POINT, "n": N, "calls": [[method, args, answer], ...], "wants": [...]}   one per stop:
      which point fired, every question the engine asked the guest and its answer, and the
      points it wanted after it (only when they changed)
"""

from __future__ import annotations

import json
from typing import Any

from .event import FollowUp, Int3Event


class JsonLines:
    def __init__(self, path: str) -> None:
        self.path = path
        self._f = open(path, "a", buffering=1)

    def write(self, rec: dict[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(rec, sort_keys=True) + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class EventLog(JsonLines):
    def meta(self, **values: Any) -> None:
        self.write({"record": "meta", **values})

    def handler_entry(self, ev: Int3Event) -> None:
        self.write({"record": "handler_entry", **ev.to_json()})

    def event(self, ev: Int3Event) -> None:
        self.write({"record": "event", **ev.to_json()})

    def followup(self, ev: Int3Event, fu: FollowUp) -> None:
        self.write({"record": "followup", "seq": ev.seq, **fu.to_json()})

    def armed(self, **values: Any) -> None:
        self.write({"record": "armed", **values})

    def error(self, message: str) -> None:
        self.write({"record": "error", "message": message})
