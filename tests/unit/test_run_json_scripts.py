"""scripts/soak-check and scripts/bench-stops read each run's run.json, the driver's record of a run."""

import importlib.machinery
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASS_LINE = "ftrace-int3 check: PASS verified=55 failed=0 missed=0 other=1 guest_unpatched=0"
FAIL_LINE = "ftrace-int3 check: FAIL verified=50 failed=1 missed=0 other=1 guest_unpatched=0"


def load(script):
    loader = importlib.machinery.SourceFileLoader(script.replace("-", "_"), os.path.join(ROOT, "scripts", script))
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(mod)
    return mod


def run_json(tmp_path, **kw):
    """A run.json as scripts/ftrace-int3-check writes it (same keys)."""
    rec = {"gdb": "armed", "accel": "tcg-single", "mode": "full", "sample": 0, "inject": None, "toggles": 4,
           "scenario": "livepatch-trace", "wall_s": 9.836, "ended": "finished", "events": 56, "reads": 6343,
           "unpatched": 0, "kernel": "6.12.117+deb12-cloud-amd64", "summary": PASS_LINE, **kw}
    (tmp_path / "run.json").write_text(json.dumps(rec))
    return str(tmp_path)


def test_soak_pass_is_decided_by_run_json_not_stdout(tmp_path):
    soak = load("soak-check")
    out = run_json(tmp_path)
    rec = soak.read_run(out)
    # stdout says nothing useful: the verdict and the printed summary come from run.json.
    lines = soak.run_lines(1, 10, 12.34, 0, rec, "checked: CPU frame ...\nsomething else\n", out)
    assert soak.passed(0, rec)
    assert lines == [f"run  1/10:   12.3s rc=0 {PASS_LINE}", "         checked: CPU frame ..."]


def test_soak_fail_from_run_json_shows_why_and_logs(tmp_path):
    soak = load("soak-check")
    out = run_json(tmp_path, summary=FAIL_LINE)
    rec = soak.read_run(out)
    stdout = f"WRONG-TARGET at x+0x4: expected a, seen b\nproblem: something\n{PASS_LINE}\n"
    assert not soak.passed(0, rec), "run.json says FAIL: a PASS on stdout must not count"
    lines = soak.run_lines(2, 10, 1.0, 1, rec, stdout, out)
    assert lines[0].endswith(f"rc=1 {FAIL_LINE}")
    assert lines[1:] == ["         WRONG-TARGET at x+0x4: expected a, seen b", "         problem: something",
                         f"         logs: {out}"]


def test_soak_no_run_json_is_a_fail(tmp_path):
    soak = load("soak-check")
    rec = soak.read_run(str(tmp_path))
    assert rec is None and not soak.passed(0, rec)
    lines = soak.run_lines(3, 3, 2.0, 2, rec, "ftrace-int3 check: FAIL verified=0 failed=0 missed=0 other=0 "
                           "guest_unpatched=-1\n", str(tmp_path))
    assert lines[0] == ("run  3/3:    2.0s rc=2 (no run.json) ftrace-int3 check: FAIL verified=0 failed=0 "
                        "missed=0 other=0 guest_unpatched=-1")
    assert lines[-1] == f"         logs: {tmp_path}"


def test_bench_table_from_run_json_records():
    bench = load("bench-stops")
    assert bench.SETUP_NAMES == ("none", "attached", "bare", "handler", "landing", "full", "idle-attached",
                                 "idle-full", "full-bp", "idle-bp", "held")
    walls = {"none": (17.1, 15.2), "attached": (18.1, 16.5), "bare": (20.0, 20.4), "handler": (21.7, 21.5),
             "landing": (24.3, 22.7), "full": (24.1, 23.5), "idle-attached": (10.0, 10.2), "idle-full": (14.0, 14.3)}
    events = {"none": 0, "attached": 0, "bare": 0, "handler": 196, "landing": 194, "full": 228,
              "idle-attached": 0, "idle-full": 1}
    results = {m: [{"wall_s": w, "reads": 1000, "events": events[m], "kernel": "6.12.117+deb12-cloud-amd64"}
                   for w in ws] for m, ws in walls.items()}
    text = bench.report(results, 30, 2).splitlines()
    assert text[0] == "command: scripts/bench-stops --toggles 30 --repeat 2"
    assert text[1].startswith("kernel 6.12.117+deb12-cloud-amd64, scenario livepatch-trace, 30 toggles")
    header, rule, rows = text[2], text[3], text[4:12]
    assert header.split()[:2] == ["setup", "wall"] and set(rule) <= {"-", " "}
    cells = {r.split()[0]: r.split() for r in rows}
    assert cells["none"] == ["none", "17.1,", "15.2", "16.1", "1000", "0"]  # no cost for no checker
    # full (watch engine): (23.8 - 17.3) s / 228 int3s = 28.5 ms per int3, / 3 stops = 9.5 ms per stop
    assert cells["full"][-2:] == ["28.5", "9.5"]
    assert cells["handler"][-1] == "11.0"  # 21.9 ms / 2 stops
    assert "(bare 1, handler 2, landing 3, full 3, full-bp 4)" in text[-2]
    assert text[-1].startswith("idle: scenario phase (BOOTED to RESULT) attached ?") and "ratio 1.40" in text[-1]
    line = bench.summary_line(results, None)
    phased = {m: [dict(r, phase_s=p) for r, p in zip(rs, (8.0, 8.2) if m == "idle-attached" else (8.3, 8.5))]
              for m, rs in results.items()}
    # The scenario phase when every idle run has it: (8.4 / 8.1); the whole run otherwise.
    assert bench.idle_ratio(phased) == pytest.approx(8.4 / 8.1) and bench.idle_ratio(phased, True) == pytest.approx(1.40, abs=0.01)
    # idle: 14.15 / 10.1; handler: (21.6 - 17.3) s / 196 int3s; landing: 6.2 s / 194
    assert line == ("ftrace-int3 bench: idle=1.40 handler_ms=21.9 landing_ms=32.0 full_ms=28.5 held_batch_ms=? "
                    "v54_full_ms=skipped v54_bp_ms=skipped v54_reads=skipped trace_all_s=skipped "
                    "trace_all_ratio=skipped")
    assert bench.summary_line(results, {"wall_s": 281.4, "passed": True}).endswith(
        "trace_all_s=281 trace_all_ratio=skipped")


def test_bench_seed_era_and_trace_all_each_against_their_own_attached_run():
    bench = load("bench-stops")
    assert set(bench.SEED_SETUPS) == {"attached", "full", "full-bp"}

    def recs(walls, reads, events, **kw):
        return [{"wall_s": w, "reads": reads, "events": events, "kernel": "5.4.286", "passed": True, **kw}
                for w in walls]
    results = {"attached": recs((17.0, 17.0), 30000, 0),
               "v5.4-attached": recs((20.0, 22.0), 12000, 0, phase_s=5.0, phase_events=0),
               "v5.4-full": recs((22.0, 24.0), 11000, 400, phase_s=6.0, phase_events=380,
                                 calls={"ftrace_regs_caller": 61, "ftrace_caller": 3}),
               "v5.4-full-bp": recs((60.0, 62.0), 1500, 200, phase_s=41.0, phase_events=180, calls={}),
               "trace-all-attached": recs((100.0,), 0, 0), "trace-all": recs((140.0,), 0, 5000, incomplete=3)}
    # Over the scenario phase: watch (6 - 5) s / 380 = 2.6 ms; breakpoints (41 - 5) s / 180 = 200 ms.
    # Whole runs: watch (23 - 21) s / 400 = 5.0 ms; breakpoints (61 - 21) s / 200 = 200 ms. Reads 12000/11000.
    line = bench.seed_line(results, "k.tar.xz")
    assert line.startswith("v5.4 (seed era, 5.4.286, mode full, attached 21.0 s, 12000 reads): ")
    assert ("watch 2.6 ms per int3 (whole run 5.0 ms, 400 int3s, 1.09x fewer guest reads, PASS, "
            "61 CALLs into ftrace_regs_caller VERIFIED per run)") in line
    assert ("breakpoints 200.0 ms per int3 (whole run 200.0 ms, 200 int3s, 8.00x fewer guest reads, PASS, "
            "0 CALLs into ftrace_regs_caller VERIFIED per run)") in line
    # A run without its phase (the guest's marks not seen): whole runs for that setup.
    nophase = {**results, "v5.4-full": [dict(r, phase_s=None) for r in results["v5.4-full"]]}
    assert bench.ms_per_int3(nophase, "v5.4-full", "v5.4-attached") == pytest.approx(5.0)
    assert bench.trace_all_line(results) == ("trace-all SAMPLE=0: armed 140 s (5000 int3s, 3 INCOMPLETE, PASS), "
                                             "attached 100 s: ratio 1.40")
    assert bench.summary_line({**results, **{m: recs((1.0,), 1, 1) for m in ("handler", "landing", "full")},
                               "idle-full": recs((2.0,), 1, 0), "idle-attached": recs((1.0,), 1, 0)},
                              results["trace-all"][0]).endswith(
        "v54_full_ms=2.6 v54_bp_ms=200.0 v54_reads=1.09 trace_all_s=140 trace_all_ratio=1.40")
    assert bench.seed_line({}, None) == "v5.4 (seed era): skipped (no v5.4 source)"
    assert bench.trace_all_line({}) == "trace-all SAMPLE=0: skipped"


def test_bench_breakdown_per_stop_from_run_json():
    bench = load("bench-stops")
    results = {"attached": [{"wall_s": 16.0, "events": 0}],
               "full": [{"wall_s": 17.0, "events": 200, "stops": {"hits": 500, "real": 400, "callback_s": 0.25,
                                                                   "reads": 1000, "read_s": 0.1}}],
               "full-bp": [{"wall_s": 22.0, "events": 200, "stops": {"hits": 1000, "real": 200, "callback_s": 0.5,
                                                                      "reads": 2000, "read_s": 0.2}}]}
    text = bench.breakdown(results).splitlines()
    rows = {line.split()[0]: line.split() for line in text[3:]}
    # full: 1 s over attached / 500 stops = 2 ms; 2 reads per stop, 0.2 ms; 0.5 - 0.2 = 0.3 ms
    # more in stop(); 2 - 0.5 = 1.5 ms outside the checker.
    assert rows["full"] == ["full", "500", "400", "2.00", "2.0", "0.20", "0.30", "1.50"]
    assert rows["full-bp"] == ["full-bp", "1000", "200", "6.00", "2.0", "0.20", "0.30", "5.50"]


def test_bench_hold_line_per_held_batch_against_full():
    bench = load("bench-stops")

    def cov(held, held_ms, hit, batches, ends):
        return {"held": held, "held_ms": held_ms, "ends": ends,
                "hold_sites": {"cmdline_proc_show": {"batches": batches, "hit": hit}}}
    results = {"full": [{"wall_s": 20.0, "events": 200, "coverage": cov(0, 0, 50, 60, {})},
                        {"wall_s": 22.0, "events": 220, "coverage": cov(0, 0, 56, 60, {})}],
               "held": [{"wall_s": 24.0, "events": 260, "coverage": cov(60, 900.0, 60, 60, {"covered": 59, "time": 1})},
                        {"wall_s": 25.0, "events": 270, "coverage": cov(62, 1000.0, 62, 62, {"covered": 62})}]}
    # (24.5 - 21.0) s over 61 held batches = 57 ms per held batch
    assert bench.held_batch_ms(results) == pytest.approx(3500 / 61)
    line = bench.hold_line(results)
    assert line.startswith("hold (HOLD=500, mode full): 61 batches held per run, patcher held 950 ms")
    assert "ends {'covered': 121, 'time': 1}" in line and "= 57 ms per held batch" in line
    assert line.endswith("hold-site batches hit 61/61 vs 53/60 without")
    assert bench.hold_line({"full": results["full"]}) == "hold: not measured"


def test_bench_counts_verified_calls_by_target_from_the_event_log(tmp_path):
    """The seed era's acceptance wants CALLs into ftrace_regs_caller verified: counted from
    the run's event log as the report reads it. Recorded 5.4.286 runs: the livepatch scenario
    verifies 60; with INJECT=skip-call the same 60 CALLs are WRONG-TARGET and count 0."""
    bench = load("bench-stops")
    data = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
    assert bench.verified_calls(os.path.join(data, "events-livepatch-trace-5.4.286-src-full.jsonl.gz")) == \
        {"ftrace_regs_caller": 60}
    assert bench.verified_calls(os.path.join(data, "events-inject-skip-call-5.4.286-src-full.jsonl.gz")) == {}
    assert bench.verified_calls(str(tmp_path / "none.jsonl")) == {}
