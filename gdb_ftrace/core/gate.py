"""When the checker's hot breakpoints are in the guest: only while the kernel patches.

Why (measured, docs/cost.md): QEMU runs every instruction of a 4 KiB page that
holds a gdb breakpoint as its own translation block, and the int3 handler's,
the int3 entry's and the iretq's pages are among the kernel's hottest; and QEMU
before 10.2 flushes its whole translation cache at every breakpoint stop. So
breakpoints that sit in those pages cost the guest while nothing is patched.

The gate (experimental, `--gate` / GATE=1) keeps them out between patching bursts:

  disarmed  in the guest: only an access watchpoint on the word the handler reads
            first (bp_desc.refs v6.0-v6.15, the bp_desc pointer v5.6-v5.19, each
            CPU's text_poke_array_refs v6.16+, nr_entries before). A batch writes
            it before any int3; an int3 no batch covers (late, stale, a kprobe's)
            makes the handler read it as zero and is read there as its entry.
            Either arms, at a real stop (gdb changes breakpoints only at one).
  armed     the mode's breakpoints (handler entry and returns, kprobe returns,
            oops_enter, int3 entry, iretq); the watchpoint is out.

Once no stop of ours has come for `quiet_s`, the driver interrupts the guest (an
interrupt stop, like a watchpoint's, costs no cache flush) and disarms if the
kernel is not patching: text_mutex free (every batch runs under it), no handler
entered and not returned, no emulation waiting for its iretq. Otherwise it stays
armed and asks again after the next quiet period. The interrupt is sent only when
no stop of ours came in the last `settle_s`: gdb steps over a breakpoint right
after its stop() returns, and an interrupt inside that step reaches the guest as
a #DB (seen once, in trace-all).

Pure: times are passed in; the gdb layer reads the guest and sends the interrupt.
"""

from __future__ import annotations

import dataclasses

MUTEX_FLAGS = 0x07  # struct mutex.owner: the task pointer | MUTEX_FLAG_* in the low 3 bits


def mutex_held(owner: int) -> bool:
    """struct mutex's atomic_long_t owner (its first member since v4.10): held when the
    task pointer part is non-zero."""
    return bool(owner & ~MUTEX_FLAGS)


@dataclasses.dataclass
class GateStats:
    arms: int = 0  # watchpoint hits that put the hot breakpoints in
    disarms: int = 0
    busy: int = 0  # interrupt stops that found the kernel still patching
    unarmed_int3s: int = 0  # int3s seen at the watchpoint (no batch) while disarmed
    interrupts: int = 0

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Gate:
    def __init__(self, quiet_s: float = 0.1, settle_s: float = 0.05, retry_s: float = 1.0) -> None:
        self.quiet_s, self.settle_s, self.retry_s = quiet_s, settle_s, retry_s
        self.armed = False
        self.last_stop = 0.0  # monotonic time of the last stop of ours (hit or real stop)
        self.interrupt_at: float | None = None  # an interrupt was sent and its stop not seen yet
        self.stats = GateStats()

    # -- events ------------------------------------------------------------
    def triggered(self, now: float) -> None:
        """The watched word was touched while disarmed: arm at the real stop this makes."""
        if not self.armed:
            self.armed = True
            self.stats.arms += 1
        self.last_stop = now

    def stopped(self, now: float) -> None:
        """A stop of ours: a breakpoint hit (stop() ran) or a real stop."""
        self.last_stop = now

    def interrupt_sent(self, now: float) -> None:
        self.interrupt_at = now
        self.stats.interrupts += 1

    def expects_interrupt(self, now: float) -> bool:
        """A SIGINT stop now is the gate's (not the user's Ctrl-C)."""
        return self.interrupt_at is not None and now - self.interrupt_at < self.retry_s

    # -- decisions -----------------------------------------------------------
    def wants_interrupt(self, now: float) -> bool:
        """Time to stop the guest and see whether the patching is over."""
        if not self.armed or now - self.last_stop < max(self.quiet_s, self.settle_s):
            return False
        return self.interrupt_at is None or now - self.interrupt_at >= self.retry_s

    def may_interrupt(self, now: float) -> bool:
        """Checked again on gdb's thread right before interrupting: no stop of ours (and so no
        step over one of its breakpoints) in the last settle_s."""
        return self.armed and now - self.last_stop >= self.settle_s

    def at_interrupt_stop(self, now: float, text_mutex_owner: int | None, open_events: int,
                          landings_pending: int) -> bool:
        """The guest is stopped by our interrupt: True to disarm now. With no text_mutex
        to read (None) only the tracker's state decides."""
        self.interrupt_at = None
        self.last_stop = now
        busy = open_events or landings_pending or (text_mutex_owner is not None and mutex_held(text_mutex_owner))
        if busy:
            self.stats.busy += 1
            return False
        self.armed = False
        self.stats.disarms += 1
        return True
