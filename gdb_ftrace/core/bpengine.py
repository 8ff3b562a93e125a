"""The breakpoint engine's decisions, pure (ENGINE=breakpoints, and kernels the watch
engine cannot watch).

A breakpoint says exactly which stop it is, so there is little to decide:
  int3_entry  the int3 entry's first instruction (mode full): the CPU's frame at %rsp
  handler     a handler's first instruction: pt_regs and what it decides by
  return      a return site of a call to a handler: %rax and pt_regs again
  iret        native_irq_return_iret (modes landing, full): ours when %rsp points at
              the regs->ip of this vCPU's emulated int3; the frame it loads is the landing
  kprobe      kprobe_int3_handler's return (an int3 the handler returned 0 for)
  die         oops_enter (or die)
Each breakpoint stop costs QEMU before 10.2 a translation-cache flush (docs/cost.md):
the int3 entry and the iretq are in only while an int3 wants them.
"""

from __future__ import annotations

from . import tracker as T
from .engine import Engine, EngineBase, Point
from .facts import need, try_u64
from .layout import u64s
from .verdict import IRET_FRAME


class BreakpointEngine(EngineBase):
    engine = Engine.BREAKPOINTS

    def points(self) -> frozenset[Point]:
        f, t, m = self.facts, self.tracker, self.mode
        want = {Point("handler", a) for _, a in f.handlers}
        want.update(Point("return", r) for r in f.returns)
        want.update(Point("kprobe", r) for r in f.followups)
        if f.die:
            want.add(Point("die", f.die))
        if m.stops_at_int3_entry and f.int3_entry and t.wants_int3_entry_stops():
            want.add(Point("int3_entry", f.int3_entry))
        if m.follows_landing and f.iret and t.wants_iret_stops():
            want.add(Point("iret", f.iret))
        return frozenset(want)

    def on_stop(self, at: str, g) -> None:
        t = self.tracker
        if at == "handler":
            self.feed(self.read_handler_entry(g, self.facts.handler_at(g.reg("rip")) or self.facts.handler_name))
        elif at == "return":
            cpu, rsp, rax = g.cpu(), g.reg("rsp"), g.reg("rax")
            ev = t.open_event_for_return(cpu, rsp)
            if ev is None:
                self.feed(T.HandlerReturnStop(cpu, rsp, rax))
            else:
                self.handler_returned(g, cpu, rsp, rax, ev)
        elif at == "iret":
            cpu, rsp = g.cpu(), g.reg("rsp")
            ev = t.iret_is_ours(cpu, rsp)
            if ev is None:
                self.feed(T.IretStop(cpu, rsp))
                return
            frame = tuple(u64s(need(g, rsp, 8 * len(IRET_FRAME))))
            top = try_u64(g, frame[IRET_FRAME.index("sp")])
            self.feed(T.IretStop(cpu, rsp, frame, top, self.landing_done(g, ev)))  # repaired after [sp] is read
        elif at == "int3_entry":
            rsp = g.reg("rsp")
            self.feed(T.Int3EntryStop(g.cpu(), rsp, tuple(u64s(need(g, rsp, 8 * len(IRET_FRAME))))))
        elif at == "kprobe":
            self.kprobe_return(g)
        elif at == "die":
            self.feed(T.DieStop(g.cpu()))
