"""Results in the formats test fleets read: KTAP (kselftest/KUnit,
Documentation/dev-tools/ktap.rst, version 1) and JUnit XML.

One test per (site, what, emulated instruction, target) group of the report,
and one for each whole-run condition (the run ended normally, the guest
finished its scenario, its unpatched reads are 0, no checker error, at least
one emulation verified). The run PASSes exactly when every test is ok (SKIPs
aside): the same rule as the summary line (core.report.Summary.passed).
Pure: events, the guest's result and problems in, text out.
"""

from __future__ import annotations

import collections
import dataclasses
import xml.etree.ElementTree as ET
from typing import Iterable

from .event import Int3Event
from .report import GuestResult, Summary, explanations, group_rows
from .verdict import verdict_class

SUITE = "ftrace-int3"


@dataclasses.dataclass
class Case:
    name: str
    ok: bool
    diagnostics: list[str]
    skip: str = ""  # a SKIP reason: neither pass nor fail
    group: str = "site"  # "site" or "run"

    @property
    def message(self) -> str:
        return self.diagnostics[0] if self.diagnostics else ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Case":
        return cls(**d)


def _safe(name: str) -> str:
    """KTAP names end at '#' (the directive): keep them out."""
    return name.replace("#", "no.").replace("\n", " ").strip()


def site_cases(events: list[Int3Event]) -> list[Case]:
    """One case per (site, what, emulated, target): ok when none of its events failed or
    was missed; a group of OTHER events only (not text patching) is a SKIP."""
    groups: dict[tuple, list[tuple]] = collections.OrderedDict()
    for row in group_rows(events):
        site, what, installing, emulated, target, verdict, count, cpus = row
        groups.setdefault((site, what, emulated, target), []).append((verdict, count, cpus, installing))
    by_key: dict[tuple, list[Int3Event]] = collections.defaultdict(list)
    for ev in events:
        rows = group_rows([ev])
        if rows:
            site, what, _i, emulated, target = rows[0][:5]
            by_key[(site, what, emulated, target)].append(ev)
    out = []
    for key, verdicts in groups.items():
        site, what, emulated, target = key
        name = _safe(f"{site} {what} {emulated} -> {target}" if target != "-" else f"{site} {what} {emulated}")
        classes = {verdict_class(v) for v, _n, _c, _i in verdicts}
        diags = [f"{v}: {n} int3(s), installing {i}, cpus {c}" for v, n, c, i in verdicts]
        bad = classes & {"failed", "missed"}
        if bad:
            diags = explanations(by_key[key], per_verdict=3) + diags
        case = Case(name, not bad, diags)
        if classes == {"other"}:
            case.skip = "not a text-patch int3: " + ", ".join(sorted({emulated}))
        out.append(case)
    return out


def run_cases(summary: Summary, guest: GuestResult | None, run_problems: Iterable[str],
              checker_errors: Iterable[str]) -> list[Case]:
    """The whole-run conditions. run_problems: how the run ended when not normally (timeout,
    gdb or QEMU gone, the checker refused to arm); checker_errors: `checker error: ...`."""
    run_problems, checker_errors = list(run_problems), list(checker_errors)
    out = [Case("run ended normally", not run_problems, run_problems, group="run")]
    if guest is None:
        no = "no guest console (attached to a QEMU the checker did not start)"
        out.append(Case("guest finished its scenario", True, [], skip=no, group="run"))
        out.append(Case("guest console free of crashes", True, [], skip=no, group="run"))
        out.append(Case("guest unpatched reads = 0", True, [], skip=no, group="run"))
    else:
        why = [] if guest.end_status == "ok" else (
            guest.errors[-1:] or [f"last console line: {guest.last_line!r}"]) + guest.crashes[:3]
        out.append(Case("guest finished its scenario", guest.end_status == "ok", why, group="run"))
        out.append(Case("guest console free of crashes", not guest.crashes, guest.crashes[:3], group="run"))
        out.append(Case("guest unpatched reads = 0", guest.unpatched == 0,
                        [f"reads={guest.reads if guest.reads is not None else '?'} "
                         f"unpatched={guest.unpatched if guest.unpatched is not None else '? (never reported)'}"],
                        group="run"))
    out.append(Case("no checker error", not checker_errors, checker_errors, group="run"))
    out.append(Case("emulations verified", summary.verified > 0, [f"verified={summary.verified}"], group="run"))
    return out


def all_cases(events: list[Int3Event], summary: Summary, guest: GuestResult | None,
              run_problems: Iterable[str] = (), checker_errors: Iterable[str] = (), coverage: str = "") -> list[Case]:
    """coverage: report.coverage_line, a case of its own that informs (what the int3 windows hit)."""
    cov = [Case("int3 coverage", True, coverage.splitlines(), group="run")] if coverage else []
    return site_cases(events) + run_cases(summary, guest, run_problems, checker_errors) + cov


def ktap(cases: list[Case], header: Iterable[str] = (), indent: str = "", subtest: str = "") -> list[str]:
    """KTAP version 1 lines: the version, the plan, the header as diagnostic lines, then for
    each test its diagnostics and its result line. With `subtest`, the `# Subtest:` line
    that kunit_parser expects between the version and the plan of a nested test."""
    lines = [f"{indent}KTAP version 1"] + ([f"{indent}# Subtest: {_safe(subtest)}"] if subtest else []) \
        + [f"{indent}1..{len(cases)}"] + [f"{indent}# {h}" for h in header]
    for i, c in enumerate(cases, 1):
        lines += [f"{indent}# {d}" for d in c.diagnostics]
        status = "ok" if c.ok or c.skip else "not ok"
        lines.append(f"{indent}{status} {i} {c.name}" + (f" # SKIP {c.skip}" if c.skip else ""))
    return lines


def passed(cases: list[Case]) -> bool:
    return all(c.ok or c.skip for c in cases)


def ktap_suites(suites: list[tuple[str, list[Case], list[str]]]) -> list[str]:
    """One KTAP document with one subtest per suite (per kernel of `make matrix`): each
    suite's tests nested and indented under it, then the suite's own result line."""
    lines = ["KTAP version 1", f"1..{len(suites)}"]
    for i, (name, cases, header) in enumerate(suites, 1):
        lines += ktap(cases, header, indent="  ", subtest=name)
        lines.append(f"{'ok' if passed(cases) else 'not ok'} {i} {_safe(name)}")
    return lines


def junit(suites: list[tuple[str, list[Case]]], time_s: float | None = None) -> str:
    """JUnit XML: one <testsuite> per suite, one <testcase> per case; a failed case has a
    <failure> whose message is its first explanation line, the rest in the text."""
    root = ET.Element("testsuites", name=SUITE)
    for name, cases in suites:
        failures = sum(1 for c in cases if not c.ok and not c.skip)
        skipped = sum(1 for c in cases if c.skip)
        ts = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)), failures=str(failures),
                           errors="0", skipped=str(skipped))
        if time_s is not None:
            ts.set("time", f"{time_s:.3f}")
        for c in cases:
            tc = ET.SubElement(ts, "testcase", name=c.name, classname=f"{SUITE}.{c.group}")
            if c.skip:
                ET.SubElement(tc, "skipped", message=c.skip)
            elif not c.ok:
                f = ET.SubElement(tc, "failure", message=c.message or "failed", type="verdict")
                f.text = "\n".join(c.diagnostics)
            elif c.diagnostics:
                ET.SubElement(tc, "system-out").text = "\n".join(c.diagnostics)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
