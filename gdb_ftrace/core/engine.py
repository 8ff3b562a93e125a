"""The engines: where the checker stops, and every decision it takes at a stop, pure.

Two engines watch the same int3s (docs/cost.md says what each costs):

  watch        read watchpoints only (v5.6+): the batch word the handler reads
               for each int3, then per int3 its return slot and its regs->cs
               (core/watch.py)
  breakpoints  breakpoints on the handler, its return sites, the int3 entry
               (mode full) and the iretq (modes landing, full) (core/bpengine.py)

`stops(mode, engine)` is the one answer to "where does the checker stop". An
engine is fed raw observations: the gdb layer says which of its points fired
(`stop(at, guest)`) and answers the engine's questions through a Guest
(core/facts.py: registers, bytes, frame facts). The engine decides what the
stop is, pairs it (core/tracker.py), judges it, and says which points it
wants in the guest next (`wants()`); the gdb layer only puts those in and
takes the others out. A Recorder in front of the Guest writes every question
and answer to the stop stream (`--stops FILE`); `replay()` runs such a stream
through the same engine without gdb, and must give the events the live run
logged (tests/unit/test_replay.py).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
from typing import Any, Callable, Iterable, NamedTuple

from . import tracker as T
from .errors import UserError
from .facts import Guest, KernelFacts, need, try_u64, u64
from .hold import Hold, HoldConfig, coverage_off
from .insn import MASK64
from .layout import GAP_WORDS, PT_REGS_X86_64, decode_struct, u64s
from .mode import CheckMode

PT_REGS = PT_REGS_X86_64
IP_OFF = PT_REGS.fields["ip"].offset
SP_OFF = PT_REGS.fields["sp"].offset


class Engine(enum.Enum):
    WATCH = "watch"
    BREAKPOINTS = "breakpoints"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: "str | Engine") -> "Engine":
        if isinstance(text, Engine):
            return text
        try:
            return cls(text)
        except ValueError:
            raise UserError(f"unknown engine {text!r}; one of: {', '.join(NAMES)}") from None


NAMES = tuple(e.value for e in Engine)
DEFAULT = Engine.WATCH


def resolve(requested: "str | Engine", facts: KernelFacts) -> tuple[Engine, str]:
    """The engine that runs for `requested` on this kernel, and why it is another one
    ('' when it is the one asked for): the watch engine needs a batch word to watch."""
    e = Engine.parse(requested)
    if e is Engine.WATCH and facts.no_watch:
        return Engine.BREAKPOINTS, facts.no_watch
    return e, ""


@dataclasses.dataclass(frozen=True)
class Stops:
    """Where the checker stops for each int3 in a mode with an engine."""

    per_int3: int  # stops for each emulated int3
    places: tuple[str, ...]
    frame_from: str  # where the CPU's own frame is read
    landing: bool

    def describe(self) -> str:
        return f"{self.per_int3} stops/int3: " + ", ".join(self.places) + f"; the CPU's frame {self.frame_from}"


def stops(mode: CheckMode, engine: Engine) -> Stops:
    """The one home of where the checker stops (docs/cost.md): per mode and engine.
    The watch engine cannot stop at the int3 entry (a breakpoint in the hottest page):
    with it `full` is `landing`, the CPU's frame read above pt_regs, and says so."""
    if engine is Engine.WATCH:
        places = ("the handler's read of the batch word", "its return slot read by its ret")
        if mode.follows_landing:
            places += ("regs->cs read by the exit path or the iretq",)
        return Stops(len(places), places, "from the six words the gap leaves above pt_regs", mode.follows_landing)
    places = ("the handler's first instruction", "its return site")
    if mode.follows_landing:
        places += ("the iretq",)
    if mode.stops_at_int3_entry:
        places = ("the int3 entry",) + places
        return Stops(len(places), places, "at the int3 entry, before the entry code copies it", True)
    return Stops(len(places), places, "from the six words the gap leaves above pt_regs", mode.follows_landing)


def describe_modes(engine: Engine | None = None) -> str:
    """One line per mode and engine: stops per int3 and where."""
    lines = []
    for e in ([engine] if engine else list(Engine)):
        for m in CheckMode:
            lines.append(f"{m.value:<8} {e.value:<11} {stops(m, e).describe()}"
                         + (" (default)" if m is CheckMode.FULL and e is DEFAULT else ""))
    return "\n".join(lines)


def require(facts: KernelFacts, mode: CheckMode, engine: Engine) -> None:
    """Refuse a mode whose stops this kernel's symbols do not have with this engine."""
    if engine is Engine.BREAKPOINTS and mode.stops_at_int3_entry and facts.int3_entry is None:
        raise UserError(f"mode {mode} needs the int3 entry (asm_exc_int3 or int3) in the symbols")
    if engine is Engine.BREAKPOINTS and mode.follows_landing and facts.iret is None:
        raise UserError(f"mode {mode} needs native_irq_return_iret in the symbols to follow the landing")
    if engine is Engine.WATCH and mode.follows_landing and not facts.exit_ranges:
        raise UserError(f"mode {mode} needs the int3 exit path (exc_int3, the entry text) in the symbols")


def describe(engine: Engine, facts: KernelFacts, note: str = "") -> str:
    """The engine in one line, for `arm`, gdb.log and `info`."""
    if engine is Engine.WATCH:
        oops = "a read watchpoint on sysctl_oops_all_cpu_backtrace" if facts.oops_word is not None \
            and facts.die_name == "oops_enter" else f"a breakpoint on {facts.die_name or 'nothing'}"
        return (f"watch: a read watchpoint on {facts.watch_word}, then each int3's return slot and regs->cs; "
                f"oopses: {oops}")
    return "breakpoints" + (f" (no watch engine here: {note})" if note else "")


class Point(NamedTuple):
    """A place the engine wants the guest to stop: `at` names it to the engine again when
    it fires; kind 'break' (a breakpoint at addr), 'read' or 'write' (a watchpoint of size bytes)."""

    at: str
    addr: int
    kind: str = "break"
    size: int = 0


# -- recording and replay ---------------------------------------------------------
def _enc(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"b": v.hex()}
    if isinstance(v, tuple):
        return [_enc(x) for x in v]
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"b"}:
        return bytes.fromhex(v["b"])
    if isinstance(v, list):
        return tuple(_dec(x) for x in v)
    return v


class Recorder:
    """A Guest in front of another: answers as it does, keeps every question and answer
    of the current stop (`calls`, in order) for the stop stream."""

    METHODS = ("cpu", "ncpus", "reg", "read", "now", "handler_frame", "frame_names", "die_args",
               "is_ftrace_location", "site_kind", "write")

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.calls: list[list] = []
        for name in self.METHODS:
            setattr(self, name, self._wrap(name, getattr(guest, name)))

    def _wrap(self, name: str, fn: Callable) -> Callable:
        def call(*args):
            result = fn(*args)
            self.calls.append([name, _enc(args), _enc(result)])
            return result
        return call

    def take(self) -> list[list]:
        calls, self.calls = self.calls, []
        return calls


class ReplayMismatch(AssertionError):
    """The engine asked a replayed stop something the live run did not ask: its decisions
    differ from the ones the stream was recorded with."""


class Replayed:
    """A Guest that answers from one recorded stop's calls (by method and arguments)."""

    def __init__(self, calls: list[list]) -> None:
        self._answers: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
        for name, args, result in calls:
            self._answers[(name, json.dumps(args))].append(_dec(result))

    def _ask(self, name: str, *args) -> Any:
        q = self._answers.get((name, json.dumps(_enc(args))))
        if not q:
            raise ReplayMismatch(f"{name}{args} was not asked in the recorded stop")
        return q.popleft()

    def __getattr__(self, name: str) -> Callable:
        if name not in Recorder.METHODS:
            raise AttributeError(name)
        return lambda *args: self._ask(name, *args)


# -- what both engines share --------------------------------------------------------
REGS_READ = PT_REGS.size + 8 * len(GAP_WORDS)  # pt_regs and the six words above it


class EngineBase:
    """Feeds the tracker, reads what a handler entry and return need, handles the
    kprobe / die follow-ups and the fault injector's fixed points (core/inject.py)."""

    engine: Engine

    def __init__(self, facts: KernelFacts, mode: CheckMode, tracker: T.Tracker, injector=None,
                 hold: "HoldConfig | None" = None) -> None:
        self.facts, self.mode, self.tracker, self.injector = facts, mode, tracker, injector
        self.fed: list | None = None  # set to a list to keep every tracker record (tests)
        self.hold, self.no_coverage = None, ""  # no_coverage: why a configured hold is not taken
        if hold is not None and facts.hold:
            self.no_coverage = coverage_off(hold, facts.hold, self.engine is Engine.WATCH)
            self.hold = None if self.no_coverage else Hold(facts, hold)

    # the interface the gdb layer drives
    def arm(self, g: Guest) -> None:
        """Reads needed once before the first stop."""

    def wants(self) -> frozenset[Point]:
        """The engine's points, and the hold's (core/hold.py) when one is configured."""
        return self.points() | frozenset(self.hold.wants()) if self.hold is not None else self.points()

    def stop(self, at: str, g: Guest) -> None:
        if self.hold is None or not self.hold.stop(at, g, self.engine is Engine.WATCH):
            self.on_stop(at, g)

    def points(self) -> frozenset[Point]:
        raise NotImplementedError

    def on_stop(self, at: str, g: Guest) -> None:
        raise NotImplementedError

    def coverage(self) -> dict[str, Any] | None:
        if self.hold is None:
            return {"off": self.no_coverage} if self.no_coverage else None
        return self.hold.coverage()

    def stats(self) -> dict[str, int] | None:
        return None

    # shared
    def feed(self, rec) -> None:
        if self.fed is not None:
            self.fed.append(rec)
        self.tracker.feed(rec)
        if self.hold is not None and isinstance(rec, T.HandlerEntryStop) and not rec.seen_at:
            self.hold.saw(rec.cpu, (rec.regs["ip"] - 1) & MASK64, rec.time_s, rec.batch)

    def _done(self, inj) -> tuple:
        return (inj,) if inj else ()

    def read_handler_entry(self, g: Guest, handler: str | None, regs_addr: int | None = None,
                           rsp: int | None = None, seen_at: str = "") -> T.HandlerEntryStop:
        """pt_regs and what the handler decides by. handler None: read before do_int3 asks
        one (v5.2-v5.5 watch engine): which one takes the int3 is KernelFacts.read_dispatch's.
        seen_at: read at oops_enter, not at the handler (no handler %rsp to pair a return with)."""
        f, inj, done = self.facts, self.injector, []
        regs_addr = g.reg("rdi") if regs_addr is None else regs_addr
        buf = need(g, regs_addr, REGS_READ)
        regs = decode_struct(PT_REGS, buf, 0, T.REGS_AT_ENTRY)
        site = (regs["ip"] - 1) & MASK64
        if inj is not None:
            done.append(inj.before_handler(g, site))
        site_bytes = g.read(site, 8) or b""
        if handler is None:
            handler, batch, ftrace = f.read_dispatch(g, site)
        else:
            batch, ftrace = f.read_decision(g, handler, site)
        if inj is not None:
            inj.after_batch(g, batch)
        cpu = g.cpu()
        top = try_u64(g, regs["sp"]) if T.wants_stack_top(batch, site) else None
        return T.HandlerEntryStop(
            cpu, None if seen_at else g.reg("rsp") if rsp is None else rsp, regs_addr, regs,
            tuple(u64s(buf[PT_REGS.size:])), site_bytes, batch, round(g.now(), 6), f.read_cpu_refs(g, cpu),
            top, tuple(i for i in done if i), ftrace, handler, seen_at)

    def read_after(self, g: Guest, ev) -> tuple[dict[str, int], int | None]:
        """What the handler left in ev's pt_regs (ip, sp), and the word at sp when sp moved."""
        after = decode_struct(PT_REGS, need(g, ev.regs_addr, PT_REGS.size), 0, ("ip", "sp"))
        return after, try_u64(g, after["sp"]) if after["sp"] != ev.before["sp"] else None

    def handler_returned(self, g: Guest, cpu: int, rsp: int, rax: int, ev, note: str = "") -> None:
        """ev's handler returned rax: the injector's turn (it may change pt_regs), then pt_regs."""
        done = self.injector and self.injector.at_return(g, ev, T.handler_return_value(rax), IP_OFF, SP_OFF)
        after, pushed = self.read_after(g, ev)
        self.feed(T.HandlerReturnStop(cpu, rsp, rax, after, pushed, self._done(done), note=note))

    def kprobe_return(self, g: Guest) -> None:
        cpu = g.cpu()
        ev = self.tracker.unhandled_event(cpu)
        ip = u64(g, ev.regs_addr + IP_OFF) if ev is not None else None
        self.feed(T.KprobeReturnStop(cpu, g.reg("rax"), ip))

    def landing_done(self, g: Guest, ev) -> tuple:
        return self._done(self.injector and self.injector.after_landing(g, ev))


# -- the stop stream -----------------------------------------------------------------
def armed_record(facts: KernelFacts, mode: CheckMode, engine: Engine, inject: str | None) -> dict[str, Any]:
    """What the event log's 'armed' record says (the driver reads it: the checker is in)."""
    return {"handlers": [n for n, _ in facts.handlers], "returns": list(facts.returns), "mode": mode.value,
            "engine": engine.value, "inject": inject}


def gap_patch_to_json(gap_patch) -> list | None:
    return [dataclasses.asdict(w) | {"data": w.data.hex()} for w in gap_patch] if gap_patch else None


def gap_patch_from_json(d) -> tuple | None:
    from .inject import Write

    return tuple(Write(w["addr"], bytes.fromhex(w["data"]), w["why"]) for w in d) if d else None


def header(facts: KernelFacts, mode: CheckMode, engine: Engine, sample: int, inject: str | None,
           gap_patch=None, hold: HoldConfig | None = None) -> dict[str, Any]:
    """The stop stream's first line: everything replay() needs besides the stops."""
    return {"stream": "raw", "facts": facts.to_json(), "mode": mode.value, "engine": engine.value,
            "sample": sample, "inject": inject, "gap_patch": gap_patch_to_json(gap_patch),
            "hold": hold.to_json() if hold is not None else None}


def make(facts: KernelFacts, mode: CheckMode, engine: Engine, tracker: T.Tracker, injector=None,
         hold: HoldConfig | None = None) -> EngineBase:
    if engine is Engine.WATCH:
        from .watch import WatchEngine
        return WatchEngine(facts, mode, tracker, injector, hold)
    from .bpengine import BreakpointEngine
    return BreakpointEngine(facts, mode, tracker, injector, hold)


@dataclasses.dataclass
class Replay:
    engine: EngineBase
    tracker: T.Tracker
    records: list  # the tracker records the engine fed, in order
    wants_ok: int  # stops after which the engine wanted exactly what the live run wanted


def replay(lines: Iterable[dict[str, Any]]) -> Replay:
    """Run a stop stream (header line, then one line per stop) through its engine again.
    Raises ReplayMismatch when a stop asks what the live run did not, or wants other
    points after a stop than the live run put in."""
    from . import inject as I

    it = iter(lines)
    h = next(it)
    if h.get("stream") != "raw":
        raise ValueError("not a raw stop stream (its first line has no 'stream': 'raw')")
    facts = KernelFacts.from_json(h["facts"])
    mode, engine = CheckMode(h["mode"]), Engine(h["engine"])
    gap = gap_patch_from_json(h.get("gap_patch"))
    t = T.Tracker(mode, h.get("sample", 0), facts.handler_name)
    e = make(facts, mode, engine, t, I.Injector(h["inject"], gap) if h.get("inject") else None,
             HoldConfig.from_json(h.get("hold")))
    e.fed = []
    ok, live = 0, None
    for rec in it:
        g = Replayed(rec.get("calls", []))
        at = rec["at"]
        if at == "arm":
            e.arm(g)
        elif at == "close":
            if e.injector is not None:
                e.injector.restore(g)
            if e.hold is not None:
                e.hold.close(g)
            continue
        elif at == "inject":  # `ftrace-int3 inject MODE|off` during the run
            if e.injector is not None:
                e.injector.restore(g)
            gap = gap_patch_from_json(rec.get("gap_patch")) or gap
            e.injector = I.Injector(rec["mode"], gap) if rec.get("mode") else None
            continue
        else:
            e.stop(at, g)
        if "wants" in rec:
            live = sorted(tuple(p) for p in rec["wants"])
        got = sorted(tuple(p) for p in e.wants())
        if live is not None and got != live:
            raise ReplayMismatch(f"after stop {rec.get('n')} ({at}) the engine wants {got}, "
                                 f"the live run wanted {live}")
        ok += 1
    t.close()
    return Replay(e, t, e.fed, ok)
