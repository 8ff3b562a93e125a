"""The check modes: what the checker follows for each int3 the kernel takes.

  handler  the handler's entry and its return: the emulation in pt_regs
  landing  + each emulated int3's landing: where its iretq sends the vCPU
  full     + the CPU's own frame read at the int3 entry, before the entry code
             copies it (breakpoint engine; the watch engine has no stop there)

Where each mode stops depends on the engine too: core.engine.stops(mode, engine)
is the one home of that (docs/cost.md: every stop costs the guest time).
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
    CheckMode.FULL: "+ the CPU's frame read at the int3 entry, before the entry code copies it (engine "
                    "breakpoints; with the watch engine full is landing: the frame is read above pt_regs)",
}

NAMES = tuple(m.value for m in CheckMode)
DEFAULT = CheckMode.FULL

