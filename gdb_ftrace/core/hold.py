"""Holding the patching vCPU while its int3s are live, and what each batch's int3s covered.

Pure: the engines call it (core/engine.EngineBase), the gdb layer only keeps the vCPU the
engine names stopped (a Point of kind "run": gdb's scheduler-locking) and turns the hold's
time bound into a stop ("hold-tick"). docs/hold.md says why each rule is what it is.

At the hold point (KernelFacts.hold: the first instruction that reads the batch after its
first sync, per era) every site of the batch has its int3 and the other vCPUs have synced.
A batch is held when it patches a hold site (HoldConfig.sites; none given: every batch,
each of its sites a hold site).
The patcher P stays stopped, one other vCPU O runs, and the hold ends at the first of:
  covered  every hold site of the batch took an int3
  time     HoldConfig.ms passed (the bound; also at O's next stop when a tick is late)
  ipi      O read P's call_single_queue: a cross-call to P would spin until P runs
  lock     O read the owner of a mutex the patcher holds (text_mutex, ftrace_lock)
Without a hold (ms 0) the hold point still counts the batches: coverage is "what chance gave".
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .facts import Guest, KernelFacts, u64
from .insn import MASK64

INT3 = 0xCC


@dataclasses.dataclass(frozen=True)
class HoldConfig:
    ms: int = 0  # 0: count batches, hold none
    sites: tuple[tuple[int, str], ...] = ()  # the hold sites: (fentry site, function name)

    def to_json(self) -> dict[str, Any]:
        return {"ms": self.ms, "sites": [list(s) for s in self.sites]}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "HoldConfig | None":
        return cls(d["ms"], tuple((int(a), n) for a, n in d["sites"])) if d else None


def fentry_site(func: int, first: bytes) -> int:
    """Where a function's ftrace call is: its first byte, after an endbr64 (IBT kernels)."""
    return func + 4 if first[:4] == b"\xf3\x0f\x1e\xfa" else func


@dataclasses.dataclass
class BatchSeen:
    n: int
    cpu: int  # the patcher
    t: float
    sites: tuple[int, ...] | None  # every site of the batch; None: not readable (v5.2-v5.5 ftrace)
    hold_sites: tuple[int, ...]  # the hold sites it patches
    hits: dict[int, int] = dataclasses.field(default_factory=dict)  # site -> int3s taken
    held_ms: float | None = None
    ended: str = ""
    insn: tuple | None = None  # (site, bytes installed) of each loc: tells one batch from the next
    unseen: bool = False  # known only from its int3s: its hold point was never reported


@dataclasses.dataclass
class Held:
    batch: BatchSeen
    cpu: int  # held (P)
    runs: int  # the vCPU that runs meanwhile (O)
    t0: float
    deadline: float
    ipi_word: int | None  # P's call_single_queue.first


class Hold:
    def __init__(self, facts: KernelFacts, cfg: HoldConfig) -> None:
        h = facts.hold or {}
        self.cfg, self.facts = cfg, facts
        self.point = tuple(h["point"]) if h.get("point") else None  # (addr, kind, size)
        self.range = tuple(h.get("range") or (0, 0))
        self.sites_from = h.get("sites_from", "batch")
        self.site_names = dict(cfg.sites)
        self.batches: list[BatchSeen] = []
        self.held: Held | None = None

    def describe(self) -> str:
        addr, kind, _ = self.point
        where = f"a {'breakpoint' if kind == 'break' else 'read watchpoint'} at {addr:#x}"
        sites = ", ".join(n for _, n in self.cfg.sites) or "every batch"
        if not self.cfg.ms:
            return f"coverage: batches counted at {where} (no hold); sites: {sites}"
        return f"hold: up to {self.cfg.ms} ms per batch at {where}, batches patching {sites}"

    # -- what the engine adds to its points ---------------------------------
    def wants(self) -> set:
        from .engine import Point

        if self.point is None:
            return set()
        addr, kind, size = self.point
        want = {Point("hold", addr, kind, size)}
        h = self.held
        if h is not None:
            want.add(Point("held", h.runs, "run", self.cfg.ms))
            if h.ipi_word is not None:
                want.add(Point("hold-ipi", h.ipi_word, "read", 8))
            want.update(Point("hold-lock", a, "read", 8) for a in self.facts.hold.get("locks", ()))
        return want

    # -- stops --------------------------------------------------------------
    def stop(self, at: str, g: Guest, watch: bool) -> bool:
        """A stop of the engine's: True when it was the hold's alone (the engine must not
        see it). With the watch engine a hit may be reported under another watchpoint's
        name, so any watchpoint stop whose %rip is in the batch function is the hold point; a
        hold point that is a breakpoint is only ever its own hit."""
        if self.held is not None:
            self._tick(g)
        if at == "hold-tick":
            return True
        if at in ("hold-ipi", "hold-lock"):
            h = self.held
            if h is not None and g.cpu() != h.cpu:
                self.release(g, at[5:])
            return not watch  # the watch engine reads %rip: a misnamed hit of its own is still seen
        if self.point is None:
            return False
        if self.point[1] == "break":  # a breakpoint's hit is named exactly (v5.2-v5.5's ftrace_replace_code)
            if at != "hold":
                return False
        else:
            if not (at == "hold" or (watch and at not in ("kprobe", "oops", "percpu"))):
                return False
            lo, hi = self.range
            if not lo <= g.reg("rip") < hi:
                return False
        if self.held is None:
            self._batch(g)
        return True

    def _batch(self, g: Guest) -> None:
        f, cpu = self.facts, g.cpu()
        def live(site: int) -> bool:
            return (g.read(site, 1) or b"\0")[0] == INT3

        insn = None
        if self.sites_from == "batch":
            locs = f.read_batch(g).locs
            sites, insn = tuple(loc.site for loc in locs), _insn(locs)
            # A later read of .old in the same function (after the batch) is no new batch:
            # at the hold point the first site has its int3 (seen on v6.16+).
            if not sites or not live(sites[0]):
                return
            mine = self._mine(sites)
        else:  # v5.2-v5.5 ftrace: the batch is not a vector; a hold site has its int3 or not
            sites = None
            mine = tuple(s for s, _ in self.cfg.sites if live(s))
        last = self.batches[-1] if self.batches else None
        if last is not None and last.unseen and insn is not None and last.insn == insn:
            # Its first int3s were taken before its sync returned (the IPI's latency): the
            # batch those int3s made is this one.
            b, b.unseen, b.cpu, b.t = last, False, cpu, g.now()
        else:
            b = BatchSeen(len(self.batches) + 1, cpu, g.now(), sites, mine, insn=insn)
            self.batches.append(b)
        n = g.ncpus()
        if self.cfg.ms > 0 and n > 1 and mine and all(x in b.hits for x in mine):
            b.held_ms, b.ended = 0.0, "covered"  # every hold site took its int3 already
        elif self.cfg.ms > 0 and n > 1 and (mine or not self.cfg.sites):
            runs = next(c for c in range(n) if c != cpu)
            csq = f.hold.get("csq")
            off = f.hold.get("per_cpu_offset")
            ipi = (u64(g, off + 8 * cpu) + csq) & MASK64 if csq is not None and off is not None else None
            self.held = Held(b, cpu, runs, b.t, b.t + self.cfg.ms / 1000.0, ipi)

    def _mine(self, sites: tuple[int, ...]) -> tuple[int, ...]:
        """The hold sites among a batch's sites (every site when none are configured)."""
        return tuple(s for s, _ in self.cfg.sites if s in sites) if self.cfg.sites else sites

    def _tick(self, g: Guest) -> None:
        h = self.held
        if h is not None and g.now() >= h.deadline:
            self.release(g, "time")

    def release(self, g: Guest | None, why: str, now: float | None = None) -> None:
        h = self.held
        if h is None:
            return
        t = now if now is not None else g.now() if g is not None else h.deadline
        h.batch.held_ms = round(1000 * (t - h.t0), 1)
        h.batch.ended = why
        self.held = None

    def saw(self, cpu: int, site: int, t: float, batch=None) -> None:
        """An int3 handler entry at site: the current batch's when the batch patches it. When
        the live batch the handler looks in (batch) installs other bytes than the current one,
        QEMU did not report that batch's hold point (QEMU 7.2 loses some watchpoint hits): it
        is a batch of its own, not held, counted as unseen."""
        b = self.batches[-1] if self.batches else None
        if self.sites_from == "batch" and batch is not None and batch.live and batch.locs:
            insn = _insn(batch.locs)
            if b is None or insn != b.insn:
                sites = tuple(loc.site for loc in batch.locs)
                if site not in sites:
                    return
                b = BatchSeen(len(self.batches) + 1, -1, t, sites, self._mine(sites), insn=insn, unseen=True)
                self.batches.append(b)
        if b is None:
            return
        if b.sites is not None and site not in b.sites:
            return
        if b.sites is None and self.cfg.sites and site not in self.site_names:
            return
        b.hits[site] = b.hits.get(site, 0) + 1
        h = self.held
        if h is not None and h.batch is b and cpu != h.cpu and b.hold_sites \
                and all(s in b.hits for s in b.hold_sites):
            self.release(None, "covered", t)

    def close(self, g: Guest) -> None:
        """The run ends (close, detach) while a batch is held: its hold ends there."""
        if self.held is not None:
            self.release(g, "closed")

    # -- the report's numbers --------------------------------------------------
    def coverage(self) -> dict[str, Any]:
        return coverage(self.batches, self.cfg)


def _insn(locs) -> tuple:
    return tuple((loc.site, loc.installed) for loc in locs)


def coverage(batches: list[BatchSeen], cfg: HoldConfig) -> dict[str, Any]:
    """Per run: batches with live int3s, with an int3 taken, per hold site the batches that
    patched it and those in which it took one, the patched sites that never took one."""
    patched: dict[int, int] = {}
    hit_sites: set[int] = set()
    for b in batches:
        for s in b.sites or b.hold_sites:
            patched[s] = patched.get(s, 0) + 1
        hit_sites.update(b.hits)
    per_site = {}
    for s, name in cfg.sites:
        mine = [b for b in batches if s in b.hold_sites]
        per_site[name] = {"batches": len(mine), "hit": sum(1 for b in mine if s in b.hits)}
    unhit = sorted((s for s in patched if s not in hit_sites), key=lambda s: -patched[s])
    ends: dict[str, int] = {}
    for b in batches:
        if b.ended:
            ends[b.ended] = ends.get(b.ended, 0) + 1
    names = dict(cfg.sites)
    bound = [{"n": b.n, "t": round(b.t, 3), "unhit": [names.get(x, f"{x:#x}") for x in b.hold_sites if x not in b.hits]}
             for b in batches if b.ended in ("time", "ipi", "lock") and any(x not in b.hits for x in b.hold_sites)]
    return {"bound_unhit": bound[:5], "bound_unhit_n": len(bound), "batches": len(batches), "batches_hit": sum(1 for b in batches if b.hits),
            "sites_known": all(b.sites is not None for b in batches), "sites": len(patched),
            "sites_hit": len(hit_sites & set(patched)), "hold_sites": per_site,
            "unhit": [f"{s:#x}" for s in unhit[:5]], "hold_ms": cfg.ms,
            "held": sum(1 for b in batches if b.held_ms is not None),
            "held_ms": round(sum(b.held_ms or 0 for b in batches), 1),
            "ends": ends, "unseen": sum(1 for b in batches if b.unseen)}


# Per era: the first read of the batch after its first sync (docs/hold.md).
HOLD_FUNCS = ("smp_text_poke_batch_finish", "text_poke_bp_batch")  # v6.16+, v5.6-v6.15
SYNC_CALLS = ("run_sync", "on_each_cpu")


def first_call_return(code: list[tuple[int, int, str]], callees: tuple[str, ...]) -> int | None:
    """The address after the first call to one of callees in a disassembly."""
    for addr, n, text in code:
        if text.split()[:1] == ["call"] and any(f"<{c}" in text for c in callees):
            return addr + n
    return None


COVERAGE_BREAK = ("not counted without a hold here: v5.2-v5.5's batch point is a breakpoint in "
                  "ftrace_replace_code, whose page is ftrace_int3_handler's, and under the watch engine "
                  "it doubled what every int3 costs (docs/cost.md); HOLD=ms holds and counts the batches")


def coverage_off(cfg: HoldConfig, hold: dict[str, Any], watch: bool) -> str:
    """Why the engine takes no hold point for `cfg` ('' when it does): a coverage count alone
    (no --hold ms) is not worth a breakpoint that the watch engine would otherwise not have:
    on QEMU 7.2 it flushes the translation cache at every hit and slows its whole page."""
    return COVERAGE_BREAK if watch and not cfg.ms and hold["point"][1] == "break" else ""


def hold_facts(*, ftrace_path: bool, replace_code: list[tuple[int, int, str]] | None, desc, desc_addr: int | None,
               loc_old: int | None, tp_vec: int | None, func_range: tuple[int, int] | None, csq: int | None,
               per_cpu_offset: int | None, locks: list[int]) -> tuple[dict[str, Any] | None, str]:
    """Where this kernel's patcher is held, from its symbols: (KernelFacts.hold, why none).
      v5.2-v5.5 ftrace    a breakpoint after ftrace_replace_code's first run_sync()
      v5.9-v6.15          a read watchpoint on tp_vec[0].old (text_poke_queue batches)
      v6.16+              a read watchpoint on text_poke_array.vec[0].old (every batch)"""
    common = {"csq": csq, "per_cpu_offset": per_cpu_offset, "locks": [a for a in locks if a]}
    if ftrace_path:
        at = first_call_return(replace_code or [], SYNC_CALLS)
        if at is None:
            return None, "no call to run_sync in ftrace_replace_code"
        return {"point": [at, "break", 0], "range": [at, at + 1], "sites_from": "text", **common}, ""
    if desc is None or loc_old is None:
        return None, "text_poke_loc has no .old (v5.6-v5.8, v5.2): no read after the first sync to watch"
    if func_range is None:
        return None, f"none of {', '.join(HOLD_FUNCS)} found"
    if desc.vec_inline:
        addr = desc_addr + desc.vec_off + loc_old
    elif tp_vec is not None:
        addr = tp_vec + loc_old
    else:
        return None, "no tp_vec"
    return {"point": [addr, "read", 1], "range": list(func_range), "sites_from": "batch", **common}, ""
