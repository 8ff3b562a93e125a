"""One int3 event, and what happened around it, as data.

An Int3Event is what the checker saw for one entry into the int3
text-patch handler: the registers the CPU saved, the batch's text_poke_loc
for the site (if any), and, when the handler returned, its return value and
the registers it left. core.verdict judges it; core.report words it.

Follow-ups (what happened after the handler, or while it ran) and
injections (what fault injection changed) are data, never prose: a verdict
or a hint reads their `kind` / `mode`, and only core.report turns them into
words.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .insn import Expected, PokeLoc, classify_bytes

# Follow-up kinds.
NESTED = "nested"  # another int3 was taken on this vCPU before this handler returned
KPROBE = "kprobe"  # kprobe_int3_handler ran after the handler returned 0
DIE = "die"  # die() was called for this int3: the kernel oopses
REPEAT = "repeat"  # the n-th unhandled int3 in a row at this site on this vCPU
FOLLOWUP_KINDS = (NESTED, KPROBE, DIE, REPEAT)


@dataclasses.dataclass(frozen=True)
class FollowUp:
    """What happened next. Values by kind:
      nested  seq, site, cpu, depth   the int3 taken inside this one's handling
      kprobe  ret, ip, rewound        kprobe_int3_handler's return value, regs->ip after it,
                                      whether it rewound regs->ip to the site (re-execute)
      die     -
      repeat  count                   unhandled int3s in a row at the site
    """

    kind: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in FOLLOWUP_KINDS:
            raise ValueError(f"unknown follow-up kind {self.kind!r}")

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.values}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FollowUp":
        d = dict(d)
        return cls(d.pop("kind"), d)


@dataclasses.dataclass(frozen=True)
class Injection:
    """One change fault injection made to this event: the mode (core.inject.INJECTIONS)
    and what was done, for the report."""

    mode: str
    what: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Int3Event:
    """Everything seen for one entry into the handler (addresses are ints)."""

    seq: int
    cpu: int  # vCPU index (0-based)
    regs_addr: int  # struct pt_regs * passed to the handler
    before: dict[str, int]  # pt_regs fields at handler entry (ip, sp, flags, cs, ss, orig_ax)
    site: int  # regs->ip - 1
    site_bytes: bytes = b""  # guest text at the site at handler entry
    gap: list[int] | None = None  # the 6 words just above pt_regs at handler entry
    batch_nr: int | None = None  # entries in the in-flight batch (None: no batch)
    loc: PokeLoc | None = None  # the in-flight batch's text_poke_loc for the site
    stale_loc: PokeLoc | None = None  # the site's text_poke_loc in the batch that just finished
    followups: list[FollowUp] = dataclasses.field(default_factory=list)
    stack_top: int | None = None  # word at the interrupted sp (for RET)
    ret: int | None = None  # handler return value (None: did not return)
    after: dict[str, int] | None = None  # regs->ip / regs->sp at return
    pushed: int | None = None  # word at the new regs->sp at return
    site_sym: str = ""
    site_kind: str = ""  # ftrace, jump label KEY, static_call NAME (from the kernel's tables)
    target_sym: str = ""
    time_s: float = 0.0  # seconds since the checker was armed
    handler: str = ""  # which kernel function handled it
    handler_rsp: int | None = None  # %rsp at the handler's first instruction (pairs the return)
    hw_frame: dict[str, int] | None = None  # the frame the CPU pushed: addr, ip, cs, flags, sp, ss
    hw_source: str = ""  # "entry": read at the int3 entry stop; "gap": the words above pt_regs
    landing: dict[str, Any] | None = None  # after iret: ip, sp, top ([sp]), top_known, source (core.tracker)
    landing_note: str = ""  # why there is no landing (not followed, run ended, ...)
    lost_return: str = ""  # why the handler's return was never seen (core.watch.LOST_*): INCOMPLETE
    cpu_refs: int | None = None  # v6.16+: this CPU's text_poke_array_refs at handler entry
    injected: list[Injection] = dataclasses.field(default_factory=list)
    depth: int = 1  # int3s in flight on this vCPU counting this one (>1: taken inside the int3 path)
    in_sample: bool = True  # entry frame / landing were wanted for it (False: past the per-batch sample)
    ftrace: dict[str, Any] | None = None  # v5.2-v5.5: the FtraceState the handler decided by
    notes: list[str] = dataclasses.field(default_factory=list)  # how the reader saw it (added to the reasons)
    seen_at: str = ""  # "oops_enter": first seen when the kernel oopsed on it (watch engine, v6.0-v6.15)
    verdict: str = ""
    reasons: list[str] = dataclasses.field(default_factory=list)
    expected: Expected | None = None

    def has_followup(self, kind: str) -> bool:
        return any(f.kind == kind for f in self.followups)

    def followup(self, kind: str) -> FollowUp | None:
        return next((f for f in self.followups if f.kind == kind), None)

    def injected_by(self, mode: str) -> bool:
        return any(i.mode == mode for i in self.injected)

    def to_json(self) -> dict[str, Any]:
        """What dataclasses.asdict gives, field by field: asdict deep-copies every value,
        the nested dataclasses first, and was a tenth of the checker's Python per int3."""
        d = {name: None if own else _plain(getattr(self, name)) for name, own in _FIELDS}
        d["injected"] = [i.to_json() for i in self.injected]
        d["site_bytes"] = self.site_bytes.hex()
        d["loc"] = self.loc.to_json() if self.loc else None
        d["stale_loc"] = self.stale_loc.to_json() if self.stale_loc else None
        d["expected"] = self.expected.to_json() if self.expected else None
        d["installed"] = classify_bytes(self.loc.installed) if self.loc else None
        d["followups"] = [f.to_json() for f in self.followups]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Int3Event":
        d = dict(d)
        d.pop("installed", None)
        d["site_bytes"] = bytes.fromhex(d.get("site_bytes") or "")
        d["loc"] = PokeLoc.from_json(d["loc"]) if d.get("loc") else None
        d["stale_loc"] = PokeLoc.from_json(d["stale_loc"]) if d.get("stale_loc") else None
        d["expected"] = Expected(**d["expected"]) if d.get("expected") else None
        d["followups"] = [FollowUp.from_json(f) for f in d.get("followups") or []]
        d["injected"] = [Injection(**i) for i in d.get("injected") or []]
        return cls(**d)


# Int3Event's fields in order, each with whether to_json converts it itself (else: _plain).
_OWN = ("site_bytes", "loc", "stale_loc", "followups", "injected", "expected")
_FIELDS = tuple((f.name, f.name in _OWN) for f in dataclasses.fields(Int3Event))
_ATOMS = (int, str, bool, float, type(None))


def _plain(v: Any) -> Any:
    """v with its dicts and lists copied (values are ints, strings, bools: JSON's)."""
    t = type(v)
    if t in _ATOMS:
        return v
    if t is dict:
        return {k: _plain(x) for k, x in v.items()}
    if t is list or t is tuple:
        return t(_plain(x) for x in v)
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    return v
