"""The hold's rules (core/hold.py) on the fake guest of fakeguest.py: when a batch is held,
which vCPU runs, each way a hold ends, what the coverage counts, where each era holds."""

from __future__ import annotations

import dataclasses

import fakeguest as F

from gdb_ftrace.core import engine as E
from gdb_ftrace.core import hold as H
from gdb_ftrace.core import tracker as T
from gdb_ftrace.core.batch import DESC_V616_ARRAY, DESC_V60_STRUCT
from gdb_ftrace.core.mode import CheckMode
from gdb_ftrace.core.report import coverage_line
from gdb_ftrace.core.bpengine import BreakpointEngine
from gdb_ftrace.core.watch import WatchEngine

BATCH_FN = 0xFFFFFFFF8104B170  # text_poke_bp_batch
HOLD_RIP = BATCH_FN + 245  # after the read of tp_vec[0].old
MEMCPY_RIP = 0xFFFFFFFF81C978B7  # memcpy_orig reads tp_vec too (text_poke_queue)
TP_VEC_OLD = 0xFFFFFFFF836E45EF
PCO = 0xFFFFFFFF82000100  # __per_cpu_offset
CSQ = 0x32B00  # call_single_queue (a per-CPU offset)
PERCPU = {0: 0xFFFF88803EC00000, 1: 0xFFFF88803ED00000}
TEXT_MUTEX = 0xFFFFFFFF82A59540
HOLD_FACTS = {"point": [TP_VEC_OLD, "read", 1], "range": [BATCH_FN, BATCH_FN + 0x400], "sites_from": "batch",
              "csq": CSQ, "per_cpu_offset": PCO, "locks": [TEXT_MUTEX]}
FACTS = dataclasses.replace(F.FACTS, hold=HOLD_FACTS)
CALL_DISP = F.CALL_TARGET - (F.SITE_CALL + 5)


class Clock(F.FakeGuest):
    def now(self) -> float:
        return self.w.t


def _world():
    w = F.World()
    w.t = 10.0
    for cpu, off in PERCPU.items():
        w.put(PCO + 8 * cpu, off.to_bytes(8, "little"))
    w.on = lambda cpu: Clock(w, cpu)
    return w


def _engine(ms=500, sites=((F.SITE_CALL, "cmdline_proc_show"),), engine=WatchEngine, facts=FACTS):
    w = _world()
    t = T.Tracker(CheckMode.HANDLER, 0, "poke_int3_handler")
    e = engine(facts, CheckMode.HANDLER, t, None, H.HoldConfig(ms, tuple(sites)))
    e.arm(w.on(0))
    return w, t, e


def _hold_point(w, e, at="hold", rip=HOLD_RIP, cpu=0, live=True):
    w.batch([(F.SITE_CALL, F.CALL, CALL_DISP)])
    w.put(F.SITE_CALL, b"\xcc" if live else b"\xe8")  # the batch's first step wrote its int3
    w.regs[cpu] = {"rip": rip, "rsp": 0xFFFFC90000003F00}
    e.stop(at, w.on(cpu))


def _run_point(e):
    return [p for p in e.wants() if p.kind == "run"]


def test_a_batch_patching_a_hold_site_is_held_with_the_other_vcpu_running():
    w, t, e = _engine()
    _hold_point(w, e)
    assert _run_point(e) == [E.Point("held", 1, "run", 500)]
    assert E.Point("hold-ipi", PERCPU[0] + CSQ, "read", 8) in e.wants()  # the held CPU's queue
    assert E.Point("hold-lock", TEXT_MUTEX, "read", 8) in e.wants()
    assert [b.hold_sites for b in e.hold.batches] == [(F.SITE_CALL,)]


def test_the_hold_ends_when_every_hold_site_took_an_int3_on_the_other_vcpu():
    w, t, e = _engine()
    _hold_point(w, e)
    w.t = 10.05
    w.int3(1, F.SITE_CALL)
    e.stop("word", w.on(1))  # the handler's read of the batch word on cpu1: an entry
    assert not _run_point(e) and not any(p.at.startswith("hold-") for p in e.wants())
    [b] = e.hold.batches
    assert b.ended == "covered" and b.hits == {F.SITE_CALL: 1} and b.held_ms == 50.0


def test_the_bound_ends_the_hold_at_a_tick_not_before():
    w, t, e = _engine(ms=200)
    _hold_point(w, e)
    w.t = 10.1
    e.stop("hold-tick", w.on(1))
    assert _run_point(e)
    w.t = 10.2
    e.stop("hold-tick", w.on(1))
    assert not _run_point(e) and e.hold.batches[0].ended == "time"


def test_a_late_tick_is_caught_at_the_next_stop_of_any_kind():
    w, t, e = _engine(ms=200)
    _hold_point(w, e)
    w.t = 11.0
    w.int3(1, F.SITE_JMP)  # not a hold site: no cover, but the clock is read
    e.stop("word", w.on(1))
    assert not _run_point(e) and e.hold.batches[0].ended == "time"


def test_a_cross_call_or_a_lock_wait_on_the_held_vcpu_ends_the_hold():
    for at, why in (("hold-ipi", "ipi"), ("hold-lock", "lock")):
        w, t, e = _engine()
        _hold_point(w, e)
        w.regs[1] = {"rip": 0xFFFFFFFF81100000}
        e.stop(at, w.on(1))
        assert not _run_point(e) and e.hold.batches[0].ended == why


def test_the_watch_engine_takes_a_misnamed_hit_in_the_batch_function_for_the_hold_point():
    """QEMU 7.2 can report a hit under another watchpoint's name (docs/cost.md): the vCPU's
    %rip says it is the hold point; the same name elsewhere (memcpy) is no batch."""
    w, t, e = _engine()
    _hold_point(w, e, at="hold", rip=MEMCPY_RIP)
    assert not e.hold.batches and not _run_point(e)
    _hold_point(w, e, at="word", rip=HOLD_RIP)
    assert len(e.hold.batches) == 1 and _run_point(e)


def test_a_batch_without_a_hold_site_is_counted_not_held():
    w, t, e = _engine(sites=((F.SITE_JMP, "other"),))
    _hold_point(w, e)
    assert len(e.hold.batches) == 1 and not _run_point(e)


def test_without_hold_ms_batches_are_only_counted():
    w, t, e = _engine(ms=0)
    _hold_point(w, e)
    w.int3(1, F.SITE_CALL)
    e.stop("word", w.on(1))
    assert not _run_point(e)
    cov = e.coverage()
    assert (cov["batches"], cov["batches_hit"], cov["hold_sites"]["cmdline_proc_show"]) == (1, 1, {"batches": 1, "hit": 1})
    assert "no hold" in coverage_line(cov)


def test_no_hold_sites_hold_every_batch_until_all_its_sites_took_one():
    w, t, e = _engine(sites=())
    _hold_point(w, e)
    assert _run_point(e)
    w.t = 10.6
    e.stop("hold-tick", w.on(1))
    cov = e.coverage()
    assert cov["ends"] == {"time": 1} and cov["bound_unhit_n"] == 1
    assert "ended at a bound with a hold site not hit" in coverage_line(cov)


def test_an_int3_before_the_first_hold_point_or_outside_the_batch_is_not_counted():
    w, t, e = _engine(ms=0)
    w.int3(1, F.SITE_CALL)
    e.stop("word", w.on(1))
    _hold_point(w, e)
    w.int3(1, F.SITE_JMP)  # not in this batch
    e.stop("word", w.on(1))
    assert e.coverage()["batches_hit"] == 0


def test_a_batch_whose_hold_point_qemu_did_not_report_is_counted_from_its_int3s():
    """QEMU 7.2 loses some watchpoint hits: an int3 whose live batch installs other bytes
    than the last batch seen is a batch of its own (seen at a 6.12 run's 75th batch)."""
    w, t, e = _engine()
    _hold_point(w, e)
    w.int3(1, F.SITE_CALL)
    e.stop("word", w.on(1))  # covered: the hold ends
    w.batch([(F.SITE_CALL, F.CALL, CALL_DISP + 0x100)])  # the next batch, no hold point seen
    w.int3(1, F.SITE_CALL)
    e.stop("word", w.on(1))
    cov = e.coverage()
    assert (cov["batches"], cov["unseen"], cov["held"]) == (2, 1, 1)
    assert cov["hold_sites"]["cmdline_proc_show"] == {"batches": 2, "hit": 2}
    assert "(1 seen only at their int3s: QEMU did not report the hold point)" in coverage_line(cov)


def test_int3s_taken_before_the_hold_point_belong_to_the_batch_it_then_names():
    """An int3 taken between a batch's first int3 and its sync (the IPI's latency): when the
    hold point then comes for the same batch, that is the batch; covered already, not held."""
    w, t, e = _engine()
    w.batch([(F.SITE_CALL, F.CALL, CALL_DISP)])
    w.int3(1, F.SITE_CALL)
    e.stop("word", w.on(1))
    assert e.hold.batches[0].unseen
    _hold_point(w, e)
    [b] = e.hold.batches
    assert not b.unseen and b.cpu == 0 and b.hits == {F.SITE_CALL: 1}
    assert (b.ended, b.held_ms) == ("covered", 0.0) and not _run_point(e)
    assert e.coverage()["unseen"] == 0


def test_the_breakpoint_engine_on_the_ftrace_path_reads_the_hold_sites_first_byte():
    """v5.2-v5.5: ftrace's own batch is no vector: a hold site is in it when it has its int3."""
    hf = {**HOLD_FACTS, "point": [BATCH_FN + 208, "break", 0], "range": [BATCH_FN + 208, BATCH_FN + 209],
          "sites_from": "text"}
    w, t, e = _engine(engine=BreakpointEngine, facts=dataclasses.replace(F.FACTS, hold=hf))
    w.put(F.SITE_CALL, b"\xcc")
    w.regs[0] = {"rip": BATCH_FN + 208}
    e.stop("hold", w.on(0))
    assert _run_point(e) and e.hold.batches[0].sites is None and e.hold.batches[0].hold_sites == (F.SITE_CALL,)
    assert E.Point("hold", BATCH_FN + 208, "break", 0) in e.wants()


def test_a_watch_stop_is_never_taken_for_a_hold_point_that_is_a_breakpoint():
    """v5.2-v5.5 with the watch engine (issue 21): the hold point is a breakpoint in
    ftrace_replace_code and the engine's word is modifying_ftrace_code. A hit of the word
    is the engine's, not a batch: the misnamed-hit rule is for a hold point that is a
    watchpoint. (It took every word stop of the first v5.4 watch run: 0 events.)"""
    hf = {**HOLD_FACTS, "point": [BATCH_FN + 208, "break", 0], "range": [BATCH_FN + 208, BATCH_FN + 209],
          "sites_from": "text"}
    w, t, e = _engine(ms=500, facts=dataclasses.replace(F.FACTS, hold=hf))  # held: no hold, no point here
    w.put(F.SITE_CALL, b"\xcc")
    w.int3(1, F.SITE_CALL)
    e.stop("word", w.on(1))
    assert not e.hold.batches and len(t.open_events()) == 1


def test_a_later_read_of_old_after_the_int3s_are_gone_is_no_batch():
    """v6.16+ reads vec[0].old again in the batch function once the site has its new first
    byte: that stop must not count (or hold) a batch nobody can hit any more."""
    w, t, e = _engine()
    _hold_point(w, e, live=False)
    assert not e.hold.batches and not _run_point(e)


def test_closing_during_a_hold_ends_it():
    w, t, e = _engine()
    _hold_point(w, e)
    e.hold.close(w.on(0))
    assert not _run_point(e) and e.hold.batches[0].ended == "closed"


def test_hold_facts_per_era():
    code = [(0x100, 5, "call   0x200 <add_break>"), (0x105, 5, "call   0x300 <run_sync>"), (0x10A, 5, "call   0x300 <run_sync>")]
    common = dict(csq=CSQ, per_cpu_offset=PCO, locks=[TEXT_MUTEX, None])
    got, why = H.hold_facts(ftrace_path=True, replace_code=code, desc=None, desc_addr=None, loc_old=None, tp_vec=None,
                            func_range=None, **common)
    assert got["point"] == [0x10A, "break", 0] and got["sites_from"] == "text" and got["locks"] == [TEXT_MUTEX]
    got, _ = H.hold_facts(ftrace_path=False, replace_code=None, desc=DESC_V60_STRUCT, desc_addr=0x1000, loc_old=15,
                          tp_vec=0x5000, func_range=(1, 2), **common)
    assert got["point"] == [0x500F, "read", 1]
    got, _ = H.hold_facts(ftrace_path=False, replace_code=None, desc=DESC_V616_ARRAY, desc_addr=0x1000, loc_old=15,
                          tp_vec=None, func_range=(1, 2), **common)
    assert got["point"] == [0x1000 + 15, "read", 1]
    got, why = H.hold_facts(ftrace_path=False, replace_code=None, desc=DESC_V60_STRUCT, desc_addr=0x1000,
                            loc_old=None, tp_vec=0x5000, func_range=(1, 2), **common)
    assert got is None and ".old" in why


def test_fentry_site_skips_endbr64():
    assert H.fentry_site(0x1000, b"\xf3\x0f\x1e\xfa") == 0x1004
    assert H.fentry_site(0x1000, b"\x0f\x1f\x44\x00") == 0x1000


def test_v54_watch_engine_takes_no_coverage_breakpoint_without_a_hold():
    """v5.2-v5.5's batch point is a breakpoint in ftrace_replace_code (the facts of the
    recorded 5.4.286 run): the watch engine takes it only to hold (--hold ms), not for a
    coverage count alone, and the coverage line says why; the breakpoint engine, which
    stops on that page anyway, still counts."""
    import gzip
    import json
    import os

    from conftest import DATA
    from gdb_ftrace.core.facts import KernelFacts
    with gzip.open(os.path.join(DATA, "stops-watch-v5.4-hold.jsonl.gz"), "rt") as f:
        head = json.loads(f.readline())
    facts = KernelFacts.from_json(head["facts"])
    assert facts.hold["point"][1] == "break"
    sites = H.HoldConfig.from_json(head["hold"]).sites
    cov_only, held = H.HoldConfig(0, sites), H.HoldConfig(500, sites)

    def engine(kind, cfg):
        return E.make(facts, CheckMode.FULL, kind, T.Tracker(CheckMode.FULL, 0, facts.handler_name), hold=cfg)
    w = engine(E.Engine.WATCH, cov_only)
    assert w.hold is None and "hold" not in {p.kind for p in w.wants()}
    assert coverage_line(w.coverage()) == "coverage: " + H.COVERAGE_BREAK
    assert engine(E.Engine.WATCH, held).hold is not None
    assert engine(E.Engine.BREAKPOINTS, cov_only).hold is not None
