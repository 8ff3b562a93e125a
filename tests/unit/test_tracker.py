"""core.tracker's pairing rules, one by one, on the tracker records the engines fed in
live runs (replayed from tests/data's raw stop streams, tests/unit/test_replay.py):
each record is what an engine made of one stop of the 6.12.118 guest."""

from __future__ import annotations

import dataclasses

import pytest
from test_replay import replay

from gdb_ftrace.core import tracker as T
from gdb_ftrace.core.event import DIE, KPROBE, NESTED, REPEAT
from gdb_ftrace.core.mode import CheckMode


def comparable(ev) -> dict:
    d = ev.to_json()
    for k in ("site_sym", "site_kind", "target_sym"):
        d.pop(k)
    return d


def records(name: str) -> list:
    return replay(name).records


def test_duplicates_are_not_counted_as_events():
    """Feeding every entry record of the multi-threaded TCG stream twice in a row changes
    nothing but the duplicate count: a second report of the same hit is not a nested int3."""
    stops = records("breakpoints-tcg-multi-6.12")
    once = T.Tracker(CheckMode.FULL, 0).replay(stops)
    twice = T.Tracker(CheckMode.FULL, 0)
    for s in stops:
        twice.feed(s)
        if isinstance(s, (T.HandlerEntryStop, T.Int3EntryStop)):
            twice.feed(s)
    once.close()
    twice.close()
    assert [comparable(e) for e in twice.events] == [comparable(e) for e in once.events]
    extra = sum(isinstance(s, (T.HandlerEntryStop, T.Int3EntryStop)) for s in stops)
    assert twice.stats.duplicate_stops == once.stats.duplicate_stops + extra


def _first(stops, cls, pred=lambda s: True):
    return next(s for s in stops if isinstance(s, cls) and pred(s))


@pytest.fixture(scope="module")
def stops():
    return records("breakpoints-full-6.12")


def test_a_run_cut_after_the_handler_entry_is_incomplete(stops):
    entry = _first(stops, T.HandlerEntryStop, lambda s: s.batch.live)
    t = T.Tracker(CheckMode.FULL, 0)
    t.feed(entry)
    assert t.events == [] and len(t.open_events()) == 1
    t.close()
    assert [e.verdict for e in t.events] == ["INCOMPLETE"]


def test_an_emulated_int3_waits_for_its_landing_then_closes_without_one(stops):
    i = next(i for i, s in enumerate(stops) if isinstance(s, T.HandlerReturnStop) and s.rax == 1)
    entry = next(s for s in reversed(stops[:i]) if isinstance(s, T.HandlerEntryStop) and s.cpu == stops[i].cpu)
    t = T.Tracker(CheckMode.FULL, 0)
    t.feed(entry)
    t.feed(stops[i])
    assert t.events == [] and t.wants_iret_stops()
    t.feed(T.IretStop(entry.cpu, 0x1234))  # another frame's iretq
    t.feed(T.IretStop(entry.cpu, entry.regs_addr + T.PT_REGS_IP))  # ours, but no frame read: nothing
    assert t.events == [] and t.wants_iret_stops()
    t.close()
    assert t.events[0].landing is None and "run ended" in t.events[0].landing_note
    # In handler mode the same pair is finished at once.
    h = T.Tracker(CheckMode.HANDLER, 0)
    h.feed(entry)
    h.feed(stops[i])
    assert len(h.events) == 1 and not h.wants_iret_stops()


def _emulated_call(stops):
    i = next(i for i, s in enumerate(stops) if isinstance(s, T.HandlerReturnStop) and s.rax == 1
             and s.pushed is not None)
    entry = next(s for s in reversed(stops[:i]) if isinstance(s, T.HandlerEntryStop) and s.cpu == stops[i].cpu)
    return entry, stops[i]


@pytest.mark.parametrize("change, verdict", [({}, "VERIFIED"), ({"ip": 1}, "WRONG-LANDING"),
                                             ({"sp": 8}, "WRONG-LANDING"), ({"top": 3}, "WRONG-LANDING")])
def test_the_landing_is_read_from_the_frame_our_iretq_loads(stops, change, verdict):
    """Recorded CALL emulation; the iretq's frame as the kernel leaves it lands VERIFIED
    with no step, and a frame off by a byte in rip, rsp or [rsp] is WRONG-LANDING."""
    entry, ret = _emulated_call(stops)
    t = T.Tracker(CheckMode.LANDING, 0)
    t.feed(entry)
    t.feed(ret)
    ip, sp = ret.after["ip"] + change.get("ip", 0), ret.after["sp"] + change.get("sp", 0)
    frame = (ip, 0x10, entry.regs["flags"], sp, 0x18)
    t.feed(T.IretStop(entry.cpu, entry.regs_addr + T.PT_REGS_IP, frame, ret.pushed + change.get("top", 0)))
    assert not t.wants_iret_stops()
    [ev] = t.events
    assert ev.landing["source"] == T.SRC_IRET_FRAME and ev.landing["top_known"]
    assert ev.verdict == verdict, ev.reasons


def test_nested_int3_is_a_followup_of_the_outer_one(stops):
    outer = _first(stops, T.HandlerEntryStop, lambda s: s.batch.live)
    inner = dataclasses.replace(outer, rsp=outer.rsp - 0x400, regs_addr=outer.regs_addr - 0x400)
    t = T.Tracker(CheckMode.HANDLER, 0)
    t.feed(outer)
    t.feed(inner)
    # The outer handler returns first in the stream order here: the inner one is orphaned.
    t.feed(T.HandlerReturnStop(outer.cpu, outer.rsp + 8, 1, {"ip": 0, "sp": outer.regs["sp"]}))
    assert t.stats.max_depth == 2
    ev_outer = next(e for e in t.events if e.seq == 1)
    fu = ev_outer.followup(NESTED)
    assert fu is not None and fu["seq"] == 2 and fu["depth"] == 2
    assert next(e for e in t.events if e.seq == 2).verdict == "INCOMPLETE"


def test_a_return_pairs_by_rsp_not_by_order(stops):
    e = _first(stops, T.HandlerEntryStop, lambda s: s.batch.live)
    t = T.Tracker(CheckMode.HANDLER, 0)
    t.feed(e)
    t.feed(T.HandlerReturnStop(e.cpu, e.rsp + 16, 1))  # not 8 above the entry's rsp
    assert t.stats.unmatched_returns == 1 and t.events == []
    assert t.open_event_for_return(e.cpu, e.rsp + 8) is not None
    assert t.open_event_for_return(e.cpu + 1, e.rsp + 8) is None  # per vCPU


def test_unhandled_int3_followups_kprobe_die_repeat(stops):
    e = _first(stops, T.HandlerEntryStop, lambda s: s.batch.live)
    late = dataclasses.replace(e, batch=dataclasses.replace(e.batch, live=False, stale=True))
    t = T.Tracker(CheckMode.HANDLER, 0)
    for n in range(2):
        t.feed(late)
        t.feed(T.HandlerReturnStop(e.cpu, e.rsp + 8, 0, {"ip": e.regs["ip"], "sp": e.regs["sp"]}))
        site = t.events[-1].site
        t.feed(T.KprobeReturnStop(e.cpu, 1 if n == 0 else 0, site))
    first, second = t.events
    assert first.verdict == second.verdict == "MISSED"
    assert first.followup(KPROBE).values == {"ret": 1, "ip": site, "rewound": True}
    assert second.followup(REPEAT)["count"] == 2
    assert second.followup(KPROBE)["ret"] == 0
    t.feed(T.DieStop(e.cpu))
    assert second.has_followup(DIE)
    t.feed(T.DieStop(e.cpu + 1))
    assert t.stats.foreign_dies == [e.cpu + 1]


def test_sampling_keeps_full_checks_for_the_first_n_of_each_batch():
    stops = records("breakpoints-full-6.12")
    full = T.Tracker(CheckMode.FULL, 0).replay(stops)
    sampled = T.Tracker(CheckMode.FULL, 1).replay(stops)
    full.close()
    sampled.close()
    # The same int3s with the same verdicts; those past the sample do not wait for a landing.
    verdicts = {e.seq: e.verdict for e in full.events}
    assert {e.seq: e.verdict for e in sampled.events} == verdicts
    assert sampled.stats.sampled_out > 0
    out = [e for e in sampled.events if not e.in_sample]
    assert out and all(e.landing is None for e in out)


def test_handler_return_value_is_a_signed_int():
    assert T.handler_return_value(1) == 1
    assert T.handler_return_value(0xFFFFFFFF) == -1
    assert T.handler_return_value(0xDEAD00000000) == 0


def test_watch_engine_stream_late_and_lost_reports():
    """What the watch engine feeds when QEMU reports a watchpoint late or never: the events
    say so, and none of them is judged on what was not seen."""
    r = replay("watch-full-6.12")
    evs = r.tracker.events
    late = [ev for ev in evs if any("reported late" in n for n in ev.notes)]
    assert late and all(ev.verdict == "VERIFIED" and ev.ret == 1 for ev in late)
    assert r.engine.st.late_returns == len(late)
    lost = [ev for ev in evs if ev.verdict == "INCOMPLETE"]
    assert all(ev.lost_return and "not judged" in ev.reasons[0] for ev in lost)
    assert len(lost) == r.engine.st.lost_returns
    landed = [ev for ev in evs if ev.landing is not None]
    assert landed and all(ev.landing["source"] in (T.SRC_REGISTERS, T.SRC_IRET_FRAME, T.SRC_FRAME_AFTER_LATE_REPORT) for ev in landed)
    assert not any(ev.verdict in ("WRONG-LANDING", "MISSED") for ev in evs)
