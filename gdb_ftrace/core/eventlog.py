"""The JSON-lines files a check writes, one object per line, flushed line by line
so that a crash of gdb, QEMU or the guest leaves everything up to it.

Event log (`arm --json FILE`; read back by report.load_events):
  {"record": "meta", ...}            the kernel, mode, injection; at close: errors, stats
  {"record": "handler_entry", ...}   an Int3Event at its handler entry (its return not seen yet)
  {"record": "event", ...}           a finished, judged Int3Event
  {"record": "followup", "seq": N, "kind": ..., ...}   a follow-up added after the event
Stop stream (`arm --stops FILE`; replayed by core.tracker in the unit tests):
  {"stop": "handler_entry", ...}     one tracker stop record per line (tracker.stop_to_json)
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
