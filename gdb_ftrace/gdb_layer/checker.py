"""The checker: internal breakpoints and the events they record.

Stops per int3 the kernel takes, by mode (each stop costs about 16 ms on
QEMU TCG, so stop() reads in bulk and does little else):

  handler  2 stops: the handler's first instruction (pt_regs, the words above
           it, the site bytes, the batch) and right after it returns into its
           caller (return value, pt_regs again). The CPU's frame is taken from
           the six words above pt_regs, where the gap leaves it.
  landing  + 2 for each emulated instruction: the iretq that returns to the
           interrupted code (stop() returns True: a real stop) and one stepi
           done by the driver loop (runner.drive), to see where the vCPU lands.
  full     + 1: the int3 entry (asm_exc_int3 / int3), where %rsp points at the
           frame the CPU pushed, before the entry code copies it.

Only the iretq stop is a real stop; every other stop() returns False so the
guest keeps running. The iretq breakpoint is enabled only while a landing is
pending.
"""

from __future__ import annotations

import collections
import json
import sys
import time
import traceback

import gdb

from ..core.errors import UserError
from ..core.insn import MASK64, find_entry
from ..core.layout import GAP_WORDS, decode_struct, u64s
from ..core.verdict import CHECK_MODES as MODES
from ..core.verdict import IRET_FRAME, Int3Event, finalize
from . import kernel, mem, symbols
from .inject import Injector

REG_FIELDS = ("ip", "sp", "flags", "cs", "ss", "orig_ax")


def _reg(frame, name: str) -> int:
    """A register of the stopped vCPU as an unsigned 64-bit int."""
    return int(frame.read_register(name)) & MASK64


def _cpu() -> int:
    """vCPU index of the thread that stopped (QEMU numbers threads from 1 per CPU)."""
    return gdb.selected_thread().num - 1


class _Bp(gdb.Breakpoint):
    def __init__(self, addr: int, callback):
        super().__init__(f"*{addr:#x}", type=gdb.BP_BREAKPOINT, internal=True)
        self.silent = True
        self._callback = callback

    def stop(self) -> bool:
        return bool(self._callback())


class Checker:
    """Records one Int3Event per handler entry; see core.verdict for the verdicts."""

    def __init__(self, json_path: str | None = None, echo: bool = False, mode: str = "handler",
                 sample: int = 0, inject: str | None = None) -> None:
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}; one of: {', '.join(MODES)}")
        if sample < 0:
            raise UserError("sample must be 0 (every int3) or a positive number per batch")
        # sample > 0: the entry stop and the landing only for the first `sample`
        # int3s of each batch; the others get the handler checks (2 stops).
        self.sample = sample
        self.batch_key: tuple | None = None
        self.batch_deep = 0
        self.sampled_out = 0
        self.kinfo = kernel.info()
        self.mode = mode
        self.injector = Injector(inject, self.kinfo) if inject else None
        if mode == "full" and self.kinfo.entry is None:
            raise UserError("MODE=full needs the int3 entry (asm_exc_int3 or int3) in the symbols")
        if mode != "handler" and self.kinfo.iret is None:
            raise UserError(f"MODE={mode} needs {kernel.IRET} in the symbols to follow the landing")
        self.hw_frames: dict[int, list[dict]] = collections.defaultdict(list)  # per CPU, from entry stops
        self.landings: dict[int, Int3Event] = {}  # per CPU: emulated, waiting for its iret
        self.step_pending: Int3Event | None = None  # stopped at its iretq: the driver must stepi
        self._iret_bp: _Bp | None = None
        self._entry_bp: _Bp | None = None
        self.entry_stops = 0
        self.foreign_irets = 0  # iretq stops that were not a pending landing's
        self.max_depth = 1  # deepest nesting of int3s on one vCPU
        self.foreign_dies: list[str] = []
        self.duplicate_stops = 0  # one breakpoint hit reported twice (multi-threaded TCG)
        self.events: list[Int3Event] = []
        self.pending: dict[int, list[Int3Event]] = collections.defaultdict(list)
        self.errors: list[str] = []
        self.unmatched_returns = 0
        self.unhandled: dict[int, Int3Event] = {}  # last event per CPU whose handler returned 0
        self.repeat_key: tuple[int, int] | None = None  # (cpu, site) of the last unhandled int3
        self.repeat_count = 0  # unhandled int3s in a row at repeat_key
        self.seq = 0
        self.echo = echo
        self.t0 = time.monotonic()
        self.json_path = json_path
        self._json = open(json_path, "a", buffering=1) if json_path else None
        self._bps: list[_Bp] = []
        if self._json:
            self._write({"record": "meta", "kernel": self.kinfo.to_json(), "armed_at": time.time(),
                         "mode": mode, "sample": sample, "inject": inject})

    # -- arming ---------------------------------------------------------
    def arm(self) -> None:
        if self.mode == "full":
            self._entry_bp = _Bp(self.kinfo.entry, self._guard(self.on_int3_entry))
            self._bps.append(self._entry_bp)
        self._bps.append(_Bp(self.kinfo.handler, self._guard(self.on_entry)))
        for _caller, ret in self.kinfo.returns:
            self._bps.append(_Bp(ret, self._guard(self.on_return)))
        for _fn, ret in self.kinfo.followups:
            self._bps.append(_Bp(ret, self._guard(self.on_kprobe_return)))
        if self.kinfo.die:
            self._bps.append(_Bp(self.kinfo.die, self._guard(self.on_die)))
        if self.mode != "handler":
            self._iret_bp = _Bp(self.kinfo.iret, self._guard(self.on_iret))
            self._iret_bp.enabled = False
            self._bps.append(self._iret_bp)

    def disarm(self) -> None:
        for bp in self._bps:
            if bp.is_valid():
                bp.delete()
        self._bps.clear()

    def close(self) -> None:
        """Undo injections, disarm, record events whose handler never returned, close the log."""
        restored = []
        try:
            restored = self.restore()
        except gdb.error as e:  # the target is gone: nothing left to restore
            restored = [f"not restored: {e}"]
        self.disarm()
        for ev in list(self.landings.values()):
            ev.landing_note = "the run ended before this vCPU returned from the int3"
            self._complete(ev)
        self.landings.clear()
        self.step_pending = None
        for stack in self.pending.values():
            for ev in stack:
                self._complete(ev)
        self.pending.clear()
        if self._json:
            self._write({"record": "meta", "closed_at": time.time(), "errors": self.errors,
                         "restored": restored, "foreign_dies": self.foreign_dies,
                         "injected": self.injector.describe() if self.injector else None,
                         "unmatched_returns": self.unmatched_returns})
            self._json.close()
            self._json = None

    @property
    def armed(self) -> bool:
        return bool(self._bps)

    # -- stops ----------------------------------------------------------
    def _guard(self, fn):
        def run():
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - a checker bug must not stop the guest
                msg = f"{type(e).__name__}: {e}"
                if len(self.errors) < 50:
                    self.errors.append(msg)
                    traceback.print_exc(file=sys.stderr)
                return False
        return run

    def on_int3_entry(self) -> None:
        """asm_exc_int3's first instruction: %rsp points at the frame the CPU pushed."""
        rsp = _reg(gdb.newest_frame(), "rsp")
        frames = self.hw_frames[_cpu()]
        if frames and frames[-1]["addr"] == rsp:  # the same stop reported twice (see on_entry)
            self.duplicate_stops += 1
            return
        self.entry_stops += 1
        words = u64s(mem.read(rsp, 8 * len(IRET_FRAME)))
        frames.append({"addr": rsp, **dict(zip(IRET_FRAME, words))})

    def on_entry(self) -> None:
        k = self.kinfo
        frame = gdb.newest_frame()
        regs_addr = _reg(frame, "rdi")
        rsp = _reg(frame, "rsp")
        open_ = self.pending.get(_cpu())
        if open_ and open_[-1].regs_addr == regs_addr and open_[-1].entry_rsp == rsp:
            # The same stop reported twice (seen with multi-threaded TCG): a real
            # nested int3 would enter on a deeper stack with another pt_regs.
            self.duplicate_stops += 1
            return
        size = k.pt_regs.size
        buf = mem.read(regs_addr, size + 8 * len(GAP_WORDS))
        before = decode_struct(k.pt_regs, buf, 0, REG_FIELDS)
        site = (before["ip"] - 1) & MASK64
        self.seq += 1
        ev = Int3Event(seq=self.seq, cpu=_cpu(), regs_addr=regs_addr, before=before, site=site,
                       gap=u64s(buf[size:]), t=round(time.monotonic() - self.t0, 6),
                       handler=k.handler_name)
        ev.entry_rsp = rsp
        frames = self.hw_frames.get(ev.cpu)
        if frames:  # the int3 entry this handler call belongs to (entries nest LIFO)
            ev.hw_frame, ev.hw_source = frames.pop(), "entry"
        elif self.mode == "full":
            ev.hw_source = "gap"  # armed between the entry and the handler
        if self.injector is not None:
            self._injected(ev, self.injector.before_handler(site))
        ev.site_bytes = mem.try_read(site, 8) or b""
        batch = k.read_batch()
        if self.injector is not None:
            self.injector.after_batch(batch)
        ev.batch_nr = batch.nr if batch.live else None
        ev.cpu_refs = k.read_cpu_refs(ev.cpu)
        found = find_entry(batch.entries, site)
        if batch.live:
            ev.entry = found
        else:
            ev.stale_entry = found
        key = (batch.nr, batch.entries[0].site, batch.entries[-1].site) if batch.live and batch.entries else None
        if key is not None and key != self.batch_key:
            self.batch_key, self.batch_deep = key, 0
        ev.deep = self.sample == 0 or key is None or self.batch_deep < self.sample
        if key is not None and ev.deep:
            self.batch_deep += 1
        if not ev.deep:
            self.sampled_out += 1
        if ev.entry is not None and ev.entry.opcode == 0xC3:  # RET pops the interrupted stack
            ev.stack_top = int.from_bytes(mem.read(before["sp"], 8), "little")
        stack = self.pending[ev.cpu]
        stack.append(ev)
        if self._json:  # so that a crash before the return still leaves the entry
            self._write({"record": "entry", **ev.to_json()})
        if len(stack) > 1:  # an int3 inside the int3 path: the kprobe_int3_handler+0x1 recursion class
            prev = stack[-2]
            ev.depth = len(stack)
            self.max_depth = max(self.max_depth, ev.depth)
            self._note(prev, f"int3 #{ev.seq} at {ev.site:#x} was taken on cpu{ev.cpu} before this "
                             f"handler returned: nesting depth {ev.depth}")

    def on_return(self) -> bool:
        stack = self.pending.get(_cpu())
        frame = gdb.newest_frame()
        # The return lands 8 bytes above the handler's entry %rsp (the call's
        # return address is popped). Pair by that, not by order: an entry whose
        # return we never see (its context died) must not take another's return.
        rsp = _reg(frame, "rsp")
        idx = next((i for i in range(len(stack or []) - 1, -1, -1)
                    if stack[i].entry_rsp is None or stack[i].entry_rsp + 8 == rsp), None)
        if idx is None:
            self.unmatched_returns += 1
            return False
        ev = stack.pop(idx)
        for orphan in stack[idx:]:  # entered later on a deeper stack, never returned
            self._complete(orphan)
        del stack[idx:]
        ev.ret = _reg(frame, "rax") & 0xFFFFFFFF
        if ev.ret & 0x80000000:
            ev.ret -= 1 << 32
        if self.injector is not None:
            f = self.kinfo.pt_regs.fields
            self._injected(ev, self.injector.at_return(ev, f["ip"].offset, f["sp"].offset))
        buf = mem.read(ev.regs_addr, self.kinfo.pt_regs.size)
        ev.after = decode_struct(self.kinfo.pt_regs, buf, 0, ("ip", "sp"))
        if ev.after["sp"] != ev.before["sp"]:
            word = mem.try_read(ev.after["sp"], 8)
            ev.pushed = int.from_bytes(word, "little") if word is not None else None
        cpu = ev.cpu
        want_landing = self._iret_bp is not None and ev.ret and not ev.before["cs"] & 3 and ev.deep
        if want_landing:
            old = self.landings.pop(cpu, None)
            if old is not None:
                old.landing_note = "no iretq to its frame was seen before the next int3 on this vCPU"
                self._complete(old)
            self.landings[cpu] = ev
        else:
            self._complete(ev)
        if ev.ret == 0:
            self.unhandled[cpu] = ev
            key = (cpu, ev.site)
            self.repeat_count = self.repeat_count + 1 if key == self.repeat_key else 1
            self.repeat_key = key
            if self.repeat_count > 1 and ev.verdict == "MISSED":
                self._note(ev, f"unhandled int3 number {self.repeat_count} in a row at this site on cpu{cpu}")
        else:
            self.unhandled.pop(cpu, None)
            self.repeat_key, self.repeat_count = None, 0
        # gdb forbids changing breakpoints inside stop(): stop for real and let
        # the driver loop switch them (sync_breakpoints()).
        return self._breakpoints_out_of_date()

    def on_iret(self) -> bool:
        """The iretq of the return to kernel mode. Ours when %rsp is our pt_regs' ip."""
        cpu = _cpu()
        ev = self.landings.get(cpu)
        if ev is None:
            self.foreign_irets += 1
            return False
        rsp = _reg(gdb.newest_frame(), "rsp")
        if rsp != ev.regs_addr + self.kinfo.pt_regs.fields["ip"].offset:
            return False
        self.step_pending = ev
        return True  # a real stop: runner.drive() steps the vCPU over the iretq

    def _wanted(self) -> dict:
        want = {}
        if self._iret_bp is not None:
            want[self._iret_bp] = bool(self.landings)
        if self._entry_bp is not None:
            want[self._entry_bp] = self.sample == 0 or self.batch_deep < self.sample
        return want

    def _breakpoints_out_of_date(self) -> bool:
        return any(bp.enabled != on for bp, on in self._wanted().items())

    def sync_breakpoints(self) -> bool:
        """Called by the driver loop at a real stop: enable the iretq breakpoint while a
        landing is pending, the entry breakpoint while the batch's sample lasts.
        True when something changed (that was the reason for the stop)."""
        changed = False
        for bp, on in self._wanted().items():
            if bp.is_valid() and bp.enabled != on:
                bp.enabled = on
                changed = True
        return changed

    def land(self) -> None:
        """Called by the driver loop, stopped at our iretq: step it and record the landing."""
        ev, self.step_pending = self.step_pending, None
        if ev is None:
            return
        if _cpu() != ev.cpu:
            gdb.execute(f"thread {ev.cpu + 1}", to_string=True)
        try:
            gdb.execute("stepi", to_string=True)
            frame = gdb.newest_frame()
            sp = _reg(frame, "rsp")
            top = mem.try_read(sp, 8)
            ev.landing = {"ip": _reg(frame, "rip"), "sp": sp,
                          "top": int.from_bytes(top, "little") if top is not None else None}
        except gdb.error as e:
            ev.landing_note = f"could not step over the iretq: {e}"
        self.landings.pop(ev.cpu, None)
        if self.injector is not None:
            self._injected(ev, self.injector.after_landing(ev))
        self.sync_breakpoints()
        self._complete(ev)

    def on_kprobe_return(self) -> None:
        ev = self.unhandled.pop(_cpu(), None)
        if ev is None:
            return
        kret = _reg(gdb.newest_frame(), "rax") & 0xFFFFFFFF
        ip = mem.read_u64(ev.regs_addr + self.kinfo.pt_regs.fields["ip"].offset)
        what = f"kprobe_int3_handler returned {kret}"
        if kret and ip == ev.site:
            what += " after rewinding regs->ip to the site: the CPU re-executes it"
        elif kret:
            what += f" with regs->ip {ip:#x}"
        else:
            what += ": nobody owns this int3, notify_die/die() come next"
            self.unhandled[ev.cpu] = ev
        self._note(ev, what)

    def on_die(self) -> None:
        ev = self.unhandled.get(_cpu())
        if ev is not None:
            self._note(ev, "die() was called: the kernel oopses on this int3")
        else:  # an oops elsewhere (after a fault, say): the guest console tells the rest
            self.foreign_dies.append(f"die() called on cpu{_cpu()} outside the int3s we followed")

    def _injected(self, ev: Int3Event, what: str | None) -> None:
        if what:
            ev.injected.append(what)

    def restore(self) -> list[str]:
        """Undo every injection (kernel text, corrupted words); safe to call twice."""
        return self.injector.restore() if self.injector is not None else []

    def _note(self, ev: Int3Event, what: str) -> None:
        ev.next.append(what)
        if self._json:
            self._write({"record": "next", "seq": ev.seq, "what": what})

    def _complete(self, ev: Int3Event) -> None:
        finalize(ev)
        ev.site_sym = symbols.vmlinux_symbol(ev.site)
        ev.site_kind = symbols.site_kind(ev.site, ev.site_sym)
        if ev.expected and ev.expected.target is not None:
            ev.target_sym = symbols.name_target(ev.expected.target)
        self.events.append(ev)
        if self._json:
            self._write({"record": "event", **ev.to_json()})
        if self.echo:
            gdb.write(f"[ftrace-int3] #{ev.seq} cpu{ev.cpu} {ev.site_sym or hex(ev.site)} "
                      f"{ev.expected.kind if ev.expected else '-'} -> {ev.verdict}\n")

    def _write(self, rec: dict) -> None:
        self._json.write(json.dumps(rec, sort_keys=True) + "\n")


_current: Checker | None = None


def current() -> Checker | None:
    return _current


def set_current(c: Checker | None) -> None:
    global _current
    _current = c
