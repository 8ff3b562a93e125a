"""Turn events into a table, explanations and the one summary line.

Pure: events (dicts or Int3Event) in, text out. The table is rendered with
tabulate; colour, when wanted, goes through core.style.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Iterable

from .insn import classify_bytes
from .verdict import FAIL_VERDICTS, Int3Event, finalize, other_kind, verdict_class

HEADERS = ("site", "what", "installing", "emulated", "target", "verdict", "count", "cpus")
V, N, E = HEADERS.index("verdict"), HEADERS.index("count"), HEADERS.index("emulated")


def _fmt_addr_sym(addr: int | None, sym: str) -> str:
    if addr is None:
        return "-"
    return sym if sym else f"{addr:#x}"


def group_rows(events: Iterable[Int3Event]) -> list[tuple]:
    """One row per (site, installed insn, emulated kind, target, verdict)."""
    counts: dict[tuple, list] = collections.OrderedDict()
    for ev in events:
        installing = classify_bytes(ev.entry.installed) if ev.entry else "-"
        emulated = ev.expected.kind if ev.expected else "-"
        if ev.verdict == "OTHER":
            emulated = other_kind(ev)
        if ev.expected and ev.expected.target is not None:
            target = _fmt_addr_sym(ev.expected.target, ev.target_sym)
        else:
            target = "-"
        key = (_fmt_addr_sym(ev.site, ev.site_sym), ev.site_kind or "-", installing, emulated, target, ev.verdict)
        slot = counts.setdefault(key, [0, set()])
        slot[0] += 1
        slot[1].add(ev.cpu)
    rows = [key + (n, ",".join(str(c) for c in sorted(cpus))) for key, (n, cpus) in counts.items()]
    rank = {"failed": 0, "missed": 1, "verified": 2, "other": 3}
    rows.sort(key=lambda r: (rank[verdict_class(r[V])], -r[N], r[0]))
    return rows


def render_table(rows: list[tuple], headers=HEADERS, limit: int | None = None) -> str:
    """The grouped rows as a table. With `limit`, FAIL-class and MISSED rows are all
    shown and the rest up to `limit` rows (the most frequent first), then a count."""
    from tabulate import tabulate  # imported here so the core imports without it

    if not rows:
        return "(no int3 events)"
    hidden: list[tuple] = []
    if limit is not None and len(rows) > limit:
        keep = [r for r in rows if verdict_class(r[V]) in ("failed", "missed")]
        rest = [r for r in rows if verdict_class(r[V]) not in ("failed", "missed")]
        room = max(limit - len(keep), 0)
        rows, hidden = keep + rest[:room], rest[room:]
    out = tabulate(rows, headers=headers, tablefmt="simple",
                   colalign=tuple("right" if h == "count" else "left" for h in headers))
    if hidden:
        kinds = collections.Counter(r[E] for r in hidden)
        out += (f"\n... {len(hidden)} more rows ({sum(r[N] for r in hidden)} events, all "
                + "/".join(sorted({r[V] for r in hidden})) + "; "
                + ", ".join(f"{k} {n}" for k, n in kinds.most_common()) + " rows): see the JSON event log")
    return out


def explanations(events: Iterable[Int3Event], per_verdict: int = 5) -> list[str]:
    """Short lines for FAIL-class and MISSED events: what was expected, what was seen."""
    out: list[str] = []
    shown: collections.Counter = collections.Counter()
    hidden: collections.Counter = collections.Counter()
    for ev in events:
        if ev.verdict not in FAIL_VERDICTS and ev.verdict != "MISSED":
            continue
        if shown[ev.verdict] >= per_verdict:
            hidden[ev.verdict] += 1
            continue
        shown[ev.verdict] += 1
        where = _fmt_addr_sym(ev.site, ev.site_sym)
        out.append(f"{ev.verdict} #{ev.seq} cpu{ev.cpu} at {where} ({ev.site:#x}): " + "; ".join(ev.reasons)
                   + ("".join(f"; then {n}" for n in ev.next))
                   + ("".join(f" [injected: {i}]" for i in ev.injected)))
    for v, n in hidden.items():
        out.append(f"{v}: {n} more like the above (see the JSON event log)")
    return out


def coverage(events: list[Int3Event]) -> str:
    """What was checked beyond the handler: CPU frames from the entry stop, landings."""
    evs = list(events)
    kernel = [ev for ev in evs if not ev.before.get("cs", 0) & 3]
    entry = sum(1 for ev in kernel if ev.hw_source == "entry")
    emulated = [ev for ev in evs if ev.ret and ev.expected is not None and ev.expected.emulate]
    landed = sum(1 for ev in emulated if ev.landing is not None)
    notes = collections.Counter(ev.landing_note for ev in emulated if ev.landing is None and ev.landing_note)
    sampled_out = sum(1 for ev in evs if not ev.deep)
    line = (f"checked: CPU frame from the int3 entry for {entry}/{len(kernel)} kernel int3s "
            f"(others: the words above pt_regs); landing after iret for {landed}/{len(emulated)} emulations")
    if sampled_out:
        line += f"; {sampled_out} int3s past the per-batch sample got the handler checks only"
    for note, n in notes.most_common(3):
        line += f"\n  {n} landing(s) not seen: {note}"
    return line


def missed_hints(events: Iterable[Int3Event], accel: str = "") -> list[str]:
    """Why MISSED int3s happened, in words, from what the events show."""
    missed = [ev for ev in events if ev.verdict == "MISSED"]
    if not missed:
        return []
    stale = [ev for ev in missed if ev.entry is None]
    out = []
    if stale:
        ev = stale[0]
        fate = "the kernel died on it (die())" if any("die()" in n for n in ev.next) else \
            "kprobe_int3_handler rewound regs->ip to re-execute the site" if any("rewinding" in n for n in ev.next) \
            else "see 'then' in the explanation above"
        out.append(
            f"hint: {len(stale)} MISSED int3(s) came after the batch covering the site had finished: the "
            f"kernel had written the new instruction and synchronised every CPU (text_poke_sync) before "
            f"it dropped the batch, yet a vCPU still executed the old int3; the handler, finding no batch, "
            f"returned 0, and {fate}."
            + (" (Here the int3 was planted by INJECT=late-int3.)" if any(
                i.startswith("late-int3") for i in ev.injected) else ""))
        if accel == "tcg-multi":
            out.append("hint: ACCEL=tcg-multi: QEMU's multi-threaded TCG can run a stale translation of "
                       "code that another vCPU rewrote; real CPUs cannot after the sync. Use "
                       "ACCEL=tcg-single (the default) to check the kernel; keep tcg-multi to see this class.")
    live = [ev for ev in missed if ev.entry is not None]
    if live:
        out.append(f"hint: {len(live)} MISSED int3(s) hit a site of the live batch and the handler "
                   f"returned 0: a handler bug (the June 2025 regression class), not an emulator artefact.")
    return out


@dataclasses.dataclass
class GuestResult:
    """What the guest said on its serial console (lines starting 'GDB_FTRACE:')."""

    booted: bool = False
    kernel: str = ""
    scenario: str = ""
    reads: int | None = None
    unpatched: int | None = None
    end_status: str | None = None  # "ok", "error" or None (never said END)
    errors: list[str] = dataclasses.field(default_factory=list)
    crashes: list[str] = dataclasses.field(default_factory=list)
    last_line: str = ""
    progress: str = ""


_CRASH = re.compile(r"(Kernel panic|Oops|BUG:|general protection fault|soft lockup|"
                    r"hung_task|double fault|stack segment|invalid opcode|RIP: )")


def parse_console(text: str) -> GuestResult:
    g = GuestResult()
    for raw in text.splitlines():
        line = raw.strip("\r")
        if line.strip():
            g.last_line = line.strip()
        if _CRASH.search(line) and len(g.crashes) < 20:
            g.crashes.append(line.strip())
        if not line.startswith("GDB_FTRACE: "):
            continue
        body = line[len("GDB_FTRACE: "):]
        word, _, rest = body.partition(" ")
        kv = dict(re.findall(r"(\w+)=(\S+)", rest))
        if word == "BOOTED":
            g.booted = True
            g.kernel = kv.get("kernel", "")
            g.scenario = kv.get("scenario", "")
        elif word == "RESULT":
            g.reads = int(kv["reads"]) if "reads" in kv else None
            g.unpatched = int(kv["unpatched"]) if "unpatched" in kv else None
        elif word == "END":
            g.end_status = kv.get("status")
        elif word == "ERROR":
            g.errors.append(rest)
        g.progress = body
    return g


@dataclasses.dataclass
class Summary:
    verified: int
    failed: int
    missed: int
    other: int
    guest_unpatched: int | None
    problems: list[str]

    @property
    def passed(self) -> bool:
        return (not self.problems and self.failed == 0 and self.missed == 0
                and self.guest_unpatched == 0 and self.verified > 0)

    def line(self) -> str:
        gu = -1 if self.guest_unpatched is None else self.guest_unpatched
        return (f"ftrace-int3 check: {'PASS' if self.passed else 'FAIL'} verified={self.verified} "
                f"failed={self.failed} missed={self.missed} other={self.other} guest_unpatched={gu}")


def summarize(events: list[Int3Event], guest: GuestResult | None,
              problems: Iterable[str] = ()) -> Summary:
    counts = collections.Counter(verdict_class(ev.verdict) for ev in events)
    probs = list(problems)
    unpatched = None
    if guest is not None:
        unpatched = guest.unpatched
        if not guest.booted:
            probs.append("the guest never reported that it booted")
        elif guest.end_status != "ok":
            probs.append("the guest did not finish its scenario" +
                         (f": {guest.errors[-1]}" if guest.errors else
                          f" (last console line: {guest.last_line!r})"))
        if guest.unpatched is None and guest.booted:
            probs.append("the guest never reported its read counts (guest_unpatched=-1 means unknown)")
        for c in guest.crashes[:3]:
            probs.append(f"guest console: {c}")
    if counts["verified"] == 0 and not probs:
        probs.append("no int3 emulation was verified: did the scenario patch any text while a CPU ran into it?")
    return Summary(counts["verified"], counts["failed"], counts["missed"], counts["other"], unpatched, probs)


def load_events(path: str) -> tuple[list[Int3Event], dict]:
    """Read a JSON-lines event log: ('event' records -> Int3Event, last 'meta' record)."""
    events: list[Int3Event] = []
    entries: dict[int, Int3Event] = {}
    meta: dict = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # A crash can cut the last line short; everything before it counts.
                continue
            kind = rec.pop("record", "event")
            if kind == "event":
                ev = Int3Event.from_json(rec)
                events.append(ev)
                entries.pop(ev.seq, None)
            elif kind == "next":
                target = next((e for e in reversed(events) if e.seq == rec["seq"]), None)
                if target is not None:
                    target.next.append(rec["what"])
            elif kind == "entry":
                ev = Int3Event.from_json(rec)
                entries[ev.seq] = ev
            elif kind == "meta":
                meta.update(rec)
    # Handler entries whose return was never recorded (gdb or the guest died).
    for ev in entries.values():
        events.append(finalize(ev))
    return events, meta
