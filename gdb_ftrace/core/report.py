"""Turn events into the report: a table, explanations, hints and the summary line.

Pure: events in, text out. `render()` is the one report, printed by the
driver (scripts/ftrace-int3-check) and by `ftrace-int3 report` in gdb alike.
The table is rendered with tabulate; colour, when wanted, goes through
core.style. This is the only place where follow-ups and injections
(core.event) become words.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import re
from typing import Iterable

from . import style
from .event import DIE, KPROBE, NESTED, REPEAT, FollowUp, Int3Event
from .insn import classify_bytes
from .verdict import FAIL_VERDICTS, finalize, other_kind, top_known, verdict_class

HEADERS = ("site", "what", "installing", "emulated", "target", "verdict", "count", "cpus")
COL_VERDICT, COL_COUNT, COL_EMULATED = HEADERS.index("verdict"), HEADERS.index("count"), HEADERS.index("emulated")
DEFAULT_ROWS = 40  # table rows shown at most (FAIL and MISSED rows always)


def _fmt_addr_sym(addr: int | None, sym: str) -> str:
    if addr is None:
        return "-"
    return sym if sym else f"{addr:#x}"


def group_rows(events: Iterable[Int3Event]) -> list[tuple]:
    """One row per (site, installed insn, emulated kind, target, verdict)."""
    counts: dict[tuple, list] = collections.OrderedDict()
    for ev in events:
        installing = classify_bytes(ev.loc.installed) if ev.loc and ev.loc.installed else "-"
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
    rows.sort(key=lambda r: (rank[verdict_class(r[COL_VERDICT])], -r[COL_COUNT], r[0]))
    return rows


def render_table(rows: list[tuple], headers=HEADERS, limit: int | None = None) -> str:
    """The grouped rows as a table, numbered (the `#` column: `ftrace-int3 show N` shows an
    event of row N). With `limit`, FAIL-class and MISSED rows are all shown and the rest
    up to `limit` rows (the most frequent first), then a count."""
    from tabulate import tabulate  # imported here so the core imports without it

    if not rows:
        return "(no int3 events)"
    numbered = [(i,) + tuple(r) for i, r in enumerate(rows, 1)]
    hidden: list[tuple] = []
    if limit is not None and len(rows) > limit:
        keep = [r for r in numbered if verdict_class(r[1 + COL_VERDICT]) in ("failed", "missed")]
        rest = [r for r in numbered if verdict_class(r[1 + COL_VERDICT]) not in ("failed", "missed")]
        room = max(limit - len(keep), 0)
        numbered, hidden = keep + rest[:room], rest[room:]
    out = tabulate(numbered, headers=("#",) + tuple(headers), tablefmt="simple",
                   colalign=("right",) + tuple("right" if h == "count" else "left" for h in headers))
    if hidden:
        kinds = collections.Counter(r[1 + COL_EMULATED] for r in hidden)
        out += (f"\n... {len(hidden)} more rows ({sum(r[1 + COL_COUNT] for r in hidden)} events, all "
                + "/".join(sorted({r[1 + COL_VERDICT] for r in hidden})) + "; "
                + ", ".join(f"{k} {n}" for k, n in kinds.most_common()) + " rows): see the JSON event log")
    return out


def row_key(ev: Int3Event) -> tuple:
    """The table row an event belongs to (without count and cpus)."""
    return group_rows([ev])[0][:COL_COUNT]


def row_events(events: list[Int3Event], n: int) -> tuple[tuple, list[Int3Event]]:
    """Row n (1-based, as the report numbers them) and its events, failed ones first."""
    rows = group_rows(events)
    if not 1 <= n <= len(rows):
        raise IndexError(f"row {n} does not exist: the report has {len(rows)} row(s)")
    key = rows[n - 1][:COL_COUNT]
    evs = [ev for ev in events if row_key(ev) == key]
    return rows[n - 1], evs


def followup_words(fu: FollowUp) -> str:
    """A follow-up in words."""
    if fu.kind == NESTED:
        return (f"int3 #{fu['seq']} at {fu['site']:#x} was taken on cpu{fu['cpu']} before this handler "
                f"returned: nesting depth {fu['depth']}")
    if fu.kind == KPROBE:
        what = f"kprobe_int3_handler returned {fu['ret']}"
        if fu["rewound"]:
            return what + " after rewinding regs->ip to the site: the CPU re-executes it"
        if fu["ret"]:
            ip = fu["ip"]
            return what + (f" with regs->ip {ip:#x}" if ip is not None else "")
        return what + ": nobody owns this int3, notify_die/die() come next"
    if fu.kind == DIE:
        return "die() was called: the kernel oopses on this int3"
    if fu.kind == REPEAT:
        return f"unhandled int3 number {fu['count']} in a row at this site"
    return fu.kind


def event_line(ev: Int3Event) -> str:
    """One line per event, as it completes (`arm --echo`)."""
    return f"#{ev.seq} cpu{ev.cpu} {ev.site_sym or hex(ev.site)} {ev.expected.kind if ev.expected else '-'} -> {ev.verdict}"


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
                   + ("".join(f"; then {followup_words(f)}" for f in ev.followups))
                   + ("".join(f" [injected: {i.what}]" for i in ev.injected)))
    for v, n in hidden.items():
        out.append(f"{v}: {n} more like the above (see the JSON event log)")
    return out


def coverage(events: list[Int3Event]) -> str:
    """What was checked beyond the handler: where each kernel int3's CPU frame was read
    (at the int3 entry, or the words the gap leaves above pt_regs), landings, returns not seen."""
    evs = list(events)
    kernel = [ev for ev in evs if not ev.before.get("cs", 0) & 3]
    entry = sum(1 for ev in kernel if ev.hw_source == "entry")
    if entry == len(kernel):
        frames = f"CPU frame from the int3 entry for {entry}/{len(kernel)} kernel int3s"
    elif entry == 0:
        frames = f"CPU frame from the words above pt_regs for {len(kernel)}/{len(kernel)} kernel int3s"
    else:
        frames = (f"CPU frame from the int3 entry for {entry}, from the words above pt_regs for "
                  f"{len(kernel) - entry}, of {len(kernel)} kernel int3s")
    emulated = [ev for ev in evs if ev.ret and ev.expected is not None and ev.expected.emulate]
    landed = sum(1 for ev in emulated if ev.landing is not None)
    notes = collections.Counter(ev.landing_note for ev in emulated if ev.landing is None and ev.landing_note)
    sampled_out = sum(1 for ev in evs if not ev.in_sample)
    late = sum(1 for ev in emulated if ev.landing and not top_known(ev.landing))
    lost = collections.Counter(ev.lost_return for ev in evs if ev.lost_return)
    line = f"checked: {frames}; landing after iret for {landed}/{len(emulated)} emulations"
    if late:
        line += f" ({late} of them reported late: rip and rsp from the frame the iretq loaded, not [rsp])"
    if lost:
        line += "; " + ", ".join(f"{n} handler return(s) {LOST_SHORT.get(code, code)}" for code, n in sorted(lost.items())) \
            + " (INCOMPLETE, not judged)"
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
    stale = [ev for ev in missed if ev.loc is None]
    out = []
    if stale:
        ev = stale[0]
        kp = ev.followup(KPROBE)
        fate = "the kernel died on it (die())" if ev.has_followup(DIE) else \
            "kprobe_int3_handler rewound regs->ip to re-execute the site" if kp is not None and kp["rewound"] \
            else "see 'then' in the explanation above"
        out.append(
            f"hint: {len(stale)} MISSED int3(s) came after the batch covering the site had finished: the "
            f"kernel had written the new instruction and synchronised every CPU (text_poke_sync) before "
            f"it dropped the batch, yet a vCPU still executed the old int3; the handler, finding no batch, "
            f"returned 0, and {fate}."
            + (" (Here the int3 was planted by INJECT=late-int3.)" if ev.injected_by("late-int3") else ""))
        if accel == "tcg-multi":
            out.append("hint: ACCEL=tcg-multi: QEMU's multi-threaded TCG can run a stale translation of "
                       "code that another vCPU rewrote; real CPUs cannot after the sync. Use "
                       "ACCEL=tcg-single (the default) to check the kernel; keep tcg-multi to see this class.")
    live = [ev for ev in missed if ev.loc is not None]
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
    guest_observed: bool = True  # False: no guest console was read (a report inside gdb, --attach)
    check: bool = False  # with no guest console: still a check's line (scripts/ftrace-int3-check --attach)

    @property
    def events(self) -> int:
        return self.verified + self.failed + self.missed + self.other

    @property
    def passed(self) -> bool:
        guest_ok = self.guest_unpatched == 0 or not self.guest_observed
        return (not self.problems and self.failed == 0 and self.missed == 0
                and guest_ok and self.verified > 0)

    def line(self) -> str:
        """The one summary line: `ftrace-int3 check: ...` for a check (the driver's last
        line), `ftrace-int3 report: ...` where no guest console was read."""
        verdict = "PASS" if self.passed else "FAIL"
        counts = f"verified={self.verified} failed={self.failed} missed={self.missed} other={self.other}"
        if not self.guest_observed and self.check:
            return f"ftrace-int3 check: {verdict} {counts} guest_unpatched=n/a"
        if not self.guest_observed:
            return f"ftrace-int3 report: {verdict} events={self.events} {counts}"
        gu = -1 if self.guest_unpatched is None else self.guest_unpatched
        return f"ftrace-int3 check: {verdict} {counts} guest_unpatched={gu}"


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
    return Summary(counts["verified"], counts["failed"], counts["missed"], counts["other"], unpatched, probs,
                   guest_observed=guest is not None)


def render(events: list[Int3Event], guest: GuestResult | None = None, problems: Iterable[str] = (),
           accel: str = "", rows: int = DEFAULT_ROWS) -> tuple[list[str], Summary]:
    """The report: table, coverage, explanations, hints, problems. Returns its lines
    and the Summary, whose line() the caller prints last. rows=0: every table row."""
    lines = [render_table(group_rows(events), limit=rows or None), coverage(events)]
    lines += [style.paint("fail", line) for line in explanations(events)]
    summary = summarize(events, guest, problems)
    lines += [style.paint("warn", line) for line in missed_hints(events, accel)]
    lines += [style.paint("warn", f"problem: {p}") for p in summary.problems]
    return lines, summary


def checker_problems(meta: dict) -> list[str]:
    """Problems the checker itself recorded in the event log's closing meta record."""
    return [f"checker error: {e}" for e in meta.get("errors") or []]


def load_events(path: str) -> tuple[list[Int3Event], dict]:
    """Read a JSON-lines event log (written by gdb_layer/checker.py): 'event' records
    -> Int3Event, 'followup' records added to their event, 'handler_entry' records
    whose 'event' never came -> INCOMPLETE, 'meta' records merged. A .gz path is read
    through gzip."""
    events: list[Int3Event] = []
    opened: dict[int, Int3Event] = {}
    meta: dict = {}
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
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
                opened.pop(ev.seq, None)
            elif kind == "followup":
                seq = rec.pop("seq")
                target = next((e for e in reversed(events) if e.seq == seq), None) or opened.get(seq)
                if target is not None:
                    target.followups.append(FollowUp.from_json(rec))
            elif kind == "handler_entry":
                ev = Int3Event.from_json(rec)
                opened[ev.seq] = ev
            elif kind == "meta":
                meta.update(rec)
            elif kind == "armed":
                meta["armed"] = rec
            elif kind == "error":
                meta.setdefault("gdb_errors", []).append(rec["message"])
    # Handler entries whose return was never recorded (gdb or the guest died).
    for ev in opened.values():
        events.append(finalize(ev))
    return events, meta


# Int3Event.lost_return (core.watch.LOST_*) in the `checked:` line; verdict.LOST_RETURN_WORDS has the long form.
LOST_SHORT = {"regs-gone": "reported by QEMU only past the iretq", "not-reported": "never reported by QEMU"}


def tools_line(meta: dict) -> str:
    """What ran the check, from the meta record's `tools` (gdb_layer/guest.tools): QEMU as
    its monitor's `info version` says (the version, then the package: QEMU prints them
    with nothing between, '7.2.22Debian 1:7.2+dfsg-7'), gdb, gdb's Python."""
    t = meta.get("tools")
    if not t:
        return ""
    stub = (t.get("qemu") or "").strip()
    m = re.match(r"(\d+(?:\.\d+)+)\s*\(?(.*?)\)?$", stub)
    qemu = (f"{m[1]} ({m[2]})" if m[2] else m[1]) if m else (stub or "? (the stub did not say)")
    return f"tools: QEMU {qemu}, gdb {t.get('gdb') or '?'}, Python {t.get('python') or '?'}"


def coverage_line(cov: dict | None) -> str:
    """The coverage (core.hold.coverage) in one line: what the int3 windows of the run hit."""
    if not cov:
        return ""
    if cov.get("off"):
        return f"coverage: {cov['off']}"
    parts = [f"{cov['batches']} batches with live int3s, {cov['batches_hit']} with an int3 taken"
             + (f" ({cov['unseen']} seen only at their int3s: QEMU did not report the hold point)"
                if cov.get("unseen") else "")]
    for name, s in cov["hold_sites"].items():
        parts.append(f"{name}: an int3 in {s['hit']}/{s['batches']} batches that patched it")
    if cov["sites_known"]:
        parts.append(f"sites: {cov['sites_hit']}/{cov['sites']} patched took one"
                     + (f" (unhit: {', '.join(cov['unhit'])})" if cov["unhit"] else ""))
    if cov["hold_ms"]:
        ends = ", ".join(f"{k} {v}" for k, v in sorted(cov["ends"].items()))
        parts.append(f"held {cov['held']} batches up to {cov['hold_ms']} ms, {cov['held_ms']:g} ms in all"
                     + (f" (ended: {ends})" if ends else ""))
    else:
        parts.append("no hold (HOLD=ms holds each batch open)")
    line = "coverage: " + "; ".join(parts)
    if cov.get("bound_unhit_n"):
        b = cov["bound_unhit"][0]
        line += (f"\nhold: {cov['bound_unhit_n']} held batches ended at a bound with a hold site not hit "
                 f"(first: batch {b['n']} at {b['t']:g} s, {', '.join(b['unhit'])}: no other vCPU ran into it)")
    return line
