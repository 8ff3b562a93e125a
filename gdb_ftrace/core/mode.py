"""What the checker stops at: the one home of the check modes.

Every gdb stop costs the guest time (see docs/cost.md), so a mode is the
set of places the checker stops at for each int3 the kernel takes:

  handler  the handler's first instruction and its return into the caller
  landing  + the iretq of each emulated int3: the frame it loads is where
             the vCPU lands (no stepi: every stop costs, docs/cost.md)
  full     + the int3 entry (asm_exc_int3 / int3), where the CPU's frame is
             read before the entry code copies it
"""

from __future__ import annotations

import enum

from .errors import UserError


class CheckMode(enum.Enum):
    HANDLER = "handler"
    LANDING = "landing"
    FULL = "full"

    @property
    def stops_at_int3_entry(self) -> bool:
        return self is CheckMode.FULL

    @property
    def follows_landing(self) -> bool:
        return self is not CheckMode.HANDLER

    @property
    def stops_per_int3(self) -> int:
        """gdb stops per emulated int3: handler entry + return, + iretq, + int3 entry."""
        return 2 + self.follows_landing + self.stops_at_int3_entry

    @property
    def help(self) -> str:
        return _HELP[self]

    @classmethod
    def parse(cls, text: str) -> "CheckMode":
        try:
            return cls(text)
        except ValueError:
            raise UserError(f"unknown mode {text!r}; one of: {', '.join(NAMES)}") from None

    def __str__(self) -> str:
        return self.value


_HELP = {
    CheckMode.HANDLER: "the handler's entry and return; the CPU's frame from the words the gap "
                       "leaves above pt_regs",
    CheckMode.LANDING: "+ follow each emulated int3 past its iretq: where it lands, rsp and [rsp]",
    CheckMode.FULL: "+ the int3 entry, where the CPU's frame is read before the entry code copies it "
                    "(engine breakpoints; the watch engine reads it above pt_regs, as landing does)",
}

NAMES = tuple(m.value for m in CheckMode)
DEFAULT = CheckMode.FULL


def describe_all() -> str:
    """One line per mode: name, stops per int3, what it adds."""
    return "\n".join(f"{m.value:<8} {m.stops_per_int3} stops/int3: {m.help}"
                     + (" (default)" if m is DEFAULT else "") for m in CheckMode)
