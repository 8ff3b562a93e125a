"""Replay: raw stop streams recorded live (scripts/record-streams: every question the
engine asked the guest at each stop, and its answer) run again through core.engine
without gdb must give exactly the events gdb logged in the same run, field for field,
and want the same watchpoints/breakpoints after every stop."""

from __future__ import annotations

import gzip
import itertools
import json
import os

import pytest
from conftest import DATA

from gdb_ftrace.core import engine as E
from gdb_ftrace.core import report

NAMES = ("site_sym", "site_kind", "target_sym")  # given by the gdb layer from the symbols
STREAMS = sorted(f[len("stops-"):-len(".jsonl.gz")] for f in os.listdir(DATA)
                 if f.startswith("stops-") and f.endswith(".jsonl.gz"))


def lines(name: str):
    with gzip.open(os.path.join(DATA, f"stops-{name}.jsonl.gz"), "rt") as f:
        for line in f:
            yield json.loads(line)


def replay(name: str) -> E.Replay:
    return E.replay(lines(name))


def live(name: str):
    return report.load_events(os.path.join(DATA, f"events-{name}.jsonl.gz"))


def comparable(ev) -> dict:
    d = ev.to_json()
    for k in NAMES:
        d.pop(k)
    return d


def test_the_streams_are_there():
    """At least: both engines on 6.12, tcg-multi with duplicates and a MISSED, an injection, v5.4."""
    assert {"watch-full-6.12", "breakpoints-full-6.12", "watch-skip-call-6.12", "v5.4-full"} <= set(STREAMS)
    assert any("tcg-multi" in s for s in STREAMS)


@pytest.mark.parametrize("name", STREAMS)
def test_replay_gives_the_live_events(name):
    want, meta = live(name)
    r = replay(name)
    got = r.tracker.events
    assert [e.seq for e in got] == [e.seq for e in want]
    for a, b in zip(got, want):
        assert comparable(a) == comparable(b), a.seq
    assert r.tracker.stats.to_json() == meta["stats"]
    assert r.engine.stats() == meta.get("engine_stats")
    assert r.wants_ok > len(got)  # the points wanted after every stop matched the live run's


@pytest.mark.parametrize("name", STREAMS)
def test_the_log_names_its_engine(name):
    """The first meta record (written before the first stop) says which engine ran."""
    with gzip.open(os.path.join(DATA, f"events-{name}.jsonl.gz"), "rt") as f:
        first = json.loads(f.readline())
    assert first["record"] == "meta" and first["engine"] == next(lines(name))["engine"]


def test_a_changed_decision_is_caught():
    """A replay is a test only if it can fail: an engine that decides otherwise asks
    what the recorded stop was not asked, or wants other points."""
    stream = list(lines("watch-full-6.12"))
    stream[0] = dict(stream[0], mode="handler")  # the landings are no longer followed
    with pytest.raises(E.ReplayMismatch):
        E.replay(stream)


def test_watch_and_breakpoints_streams_say_where_they_stop():
    w, b = replay("watch-full-6.12"), replay("breakpoints-full-6.12")
    assert {type(x).__name__ for x in b.records} >= {"Int3EntryStop", "HandlerEntryStop", "HandlerReturnStop",
                                                     "IretStop"}
    assert "Int3EntryStop" not in {type(x).__name__ for x in w.records}
    kernel = [e for e in b.tracker.events if not e.before["cs"] & 3]
    assert kernel and all(e.hw_source == "entry" for e in kernel)
    assert all(e.hw_source == "gap" for e in w.tracker.events if not e.before["cs"] & 3)
    for r in (w, b):
        emulated = [e for e in r.tracker.events if e.ret == 1]
        assert len(emulated) >= 50
        assert {e.verdict for e in r.tracker.events} <= {"VERIFIED", "OTHER", "INCOMPLETE"}


def test_tcg_multi_stream_has_duplicates_and_a_missed():
    name = next(s for s in STREAMS if s.startswith("breakpoints-tcg-multi"))
    r = replay(name)
    assert r.tracker.stats.duplicate_stops > 0
    missed = [e for e in r.tracker.events if e.verdict == "MISSED"]
    assert missed and all(e.loc is None for e in missed)  # late: after the batch had finished
    assert not [e for e in r.tracker.events if e.verdict in ("WRONG-TARGET", "WRONG-RETURN", "WRONG-STACK",
                                                           "GAP-VIOLATION", "WRONG-LANDING",
                                                           "UNEXPECTED-EMULATION")]


def test_injected_skip_call_stream_gives_wrong_target():
    r = replay("watch-skip-call-6.12")
    bad = [e for e in r.tracker.events if e.verdict == "WRONG-TARGET"]
    assert bad and all(e.injected_by("skip-call") and e.expected.kind == "CALL" for e in bad)
    assert all(e.after["ip"] == e.site + 5 for e in bad)


def test_v54_stream_emulates_calls_into_ftrace_regs_caller():
    r = replay("v5.4-full")
    calls = [e for e in r.tracker.events if e.handler == "ftrace_int3_handler" and e.ret == 1]
    assert calls and all(e.expected.kind == "CALL" and e.after["ip"] == e.ftrace["regs_caller"] for e in calls)
    assert r.engine.engine is E.Engine.BREAKPOINTS  # recorded with --engine breakpoints


def test_v54_watch_stream_reads_modifying_ftrace_code_in_do_int3():
    """v5.2-v5.5 with the watch engine: every int3 reads modifying_ftrace_code in do_int3
    (before ftrace_int3_handler), the handler's return is inferred at do_int3's return
    from pt_regs, and the CALLs into ftrace_regs_caller verify as on breakpoints."""
    r = replay("watch-v5.4-full")
    assert r.engine.engine is E.Engine.WATCH
    assert "Int3EntryStop" not in {type(x).__name__ for x in r.records}
    calls = [e for e in r.tracker.events if e.handler == "ftrace_int3_handler" and e.ret == 1]
    assert len(calls) >= 50
    assert all(e.expected.kind == "CALL" and e.after["ip"] == e.ftrace["regs_caller"] for e in calls)
    assert all(e.verdict == "VERIFIED" for e in calls)
    assert {e.verdict for e in r.tracker.events} <= {"VERIFIED", "OTHER"}
    # mode full: no return slot; do_int3's return is read at the exit path's regs->cs test
    st = r.engine.stats()
    assert st["returns"] == 0 and st["exit_returns"] >= len(calls) and st["landings_before_iret"] >= len(calls)


def test_v54_watch_skip_call_stream_gives_wrong_target():
    r = replay("watch-v5.4-skip-call")
    bad = [e for e in r.tracker.events if e.verdict == "WRONG-TARGET"]
    assert bad and all(e.injected_by("skip-call") and e.expected.kind == "CALL" for e in bad)
    assert all(e.after["ip"] == e.site + 5 for e in bad)


@pytest.mark.parametrize("name", [s for s in STREAMS if "hold" in s])
def test_hold_streams_replay_to_the_logged_coverage(name):
    """A held run (--hold): the replayed hold takes the same batches, holds and ends as the
    live one (the wanted points already matched after every stop, the run point included),
    and every batch that patched the hold site took an int3."""
    r = replay(name)
    _, meta = live(name)
    got, want = r.engine.coverage(), dict(meta["coverage"])
    assert {k: v for k, v in got.items() if k != "unhit"} == {k: v for k, v in want.items() if k != "unhit"}
    assert len(got["unhit"]) == len(want["unhit"])
    site = got["hold_sites"]["cmdline_proc_show"]
    assert got["held"] >= 3 and site["batches"] >= 3 and site["hit"] == site["batches"]
    assert "run" in {p.kind for p in r.engine.wants()} or got["ends"].get("covered", 0) >= 3


def test_the_hold_streams_are_there():
    assert {"watch-hold-6.12", "v5.4-hold", "watch-v5.4-hold"} <= set(STREAMS)


def test_a_pre_series_kernel_is_its_own_skip_call():
    """A kernel from before the series, replayed: the v5.4 skip-call stream with the
    facts of a kernel that has no ftrace_update_func_call (what tells the era from the
    code) and no injector: the guest's answers are those of a handler that skips, as
    4.19.45's does. Every skip is WRONG-TARGET, not injected, and says it is the
    kernel's own pre-series behaviour."""
    import copy

    from gdb_ftrace.core import ftrace_era
    it = lines("v5.4-skip-call")
    h = copy.deepcopy(next(it))
    h["facts"]["ftrace"]["update_func_call"] = None
    del h["inject"]
    r = E.replay(itertools.chain([h], it))
    bad = [e for e in r.tracker.events if e.verdict == "WRONG-TARGET"]
    assert bad and all(e.handler == "ftrace_int3_handler" and not e.injected_by("skip-call") for e in bad)
    assert all(e.after["ip"] == e.site + 5 and e.reasons[-1] == ftrace_era.PRE_SERIES for e in bad)
    assert all(e.ftrace["update_func_call"] is None for e in r.tracker.events if e.ftrace)
    assert {e.verdict for e in r.tracker.events} <= {"VERIFIED", "WRONG-TARGET", "OTHER"}


@pytest.mark.parametrize("name", STREAMS)
def test_event_json_is_what_asdict_gives(name):
    """Int3Event.to_json copies field by field; every recorded event gives what
    dataclasses.asdict (with the hex, the nested to_json and `installed`) gave."""
    import dataclasses
    from gdb_ftrace.core.insn import classify_bytes
    for ev in live(name)[0]:
        d = dataclasses.asdict(ev)
        d.update(site_bytes=ev.site_bytes.hex(), loc=ev.loc.to_json() if ev.loc else None,
                 stale_loc=ev.stale_loc.to_json() if ev.stale_loc else None,
                 expected=ev.expected.to_json() if ev.expected else None,
                 installed=classify_bytes(ev.loc.installed) if ev.loc else None,
                 followups=[f.to_json() for f in ev.followups])
        assert ev.to_json() == d, ev.seq
