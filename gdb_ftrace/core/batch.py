"""The in-flight text-patch batch: where it lives in each era, and whether it is live.

Pure: the gdb layer reads the descriptor's bytes and the vector's bytes; this
module says what to read and what it means (struct bp_patching_desc / smp_text_poke_array
in arch/x86/kernel/alternative.c of each era; docs/eras.md):

  era          descriptor                                      live when
  v5.6-v5.19   static struct bp_patching_desc *bp_desc         bp_desc != NULL
               {vec *, nr_entries, refs}
  v6.0-v6.15   static struct bp_patching_desc bp_desc          bp_desc.refs != 0
               {vec *, nr_entries, refs}; vec/nr_entries are NOT cleared
               after the batch, so the last batch stays readable
  v6.16+       static struct smp_text_poke_array text_poke_array   nr_entries != 0
               {vec[TEXT_POKE_ARRAY_MAX], nr_entries}; refs are per CPU
               (text_poke_array_refs) and nr_entries is zeroed at the end
"""

from __future__ import annotations

import dataclasses

from . import ftrace_era
from .insn import PokeLoc, decode_vector
from .layout import TEXT_POKE_LOC_V517, StructLayout

MAX_ENTRIES = 65536  # far above any real TP_VEC_MAX / TEXT_POKE_ARRAY_MAX (256)


@dataclasses.dataclass(frozen=True)
class DescLayout:
    """Where the batch descriptor keeps its vector, count and refcount."""

    name: str  # bp_desc, text_poke_array, ...
    is_pointer: bool  # the symbol is a pointer to the descriptor (v5.6-v5.19)
    size: int  # sizeof the descriptor struct
    vec_off: int
    vec_inline: bool  # vec[] is an array inside the descriptor (v6.16+)
    nr_off: int
    refs_off: int | None  # None where refs are not in the descriptor

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Documented layouts, for tests and for kernels without DWARF for the descriptor.
DESC_V56_POINTER = DescLayout("bp_desc", True, 16, 0, False, 8, 12)
DESC_V60_STRUCT = DescLayout("bp_desc", False, 16, 0, False, 8, 12)
DESC_V616_ARRAY = DescLayout("text_poke_array", False, 4096 + 4, 0, True, 4096, None)


def _release(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


def documented(desc_name: str, version: str) -> tuple[DescLayout, StructLayout] | None:
    """The descriptor and text_poke_loc layouts of a kernel without DWARF, where the
    era fixes them (the symbol says which descriptor, linux_banner which release):
    v6.16+ text_poke_array, v6.0-v6.15 the bp_desc struct, v5.17-v5.19 the bp_desc
    pointer; all with the 16-byte v5.17+ text_poke_loc. None for v5.16 and older:
    there the text_poke_loc changed inside stable series (the 5.10.y and 5.15.y
    backports of 26c44b776dba), so only DWARF can say which one a kernel has."""
    rel = _release(version)
    if desc_name == "text_poke_array":
        return DESC_V616_ARRAY, TEXT_POKE_LOC_V517
    if desc_name == "bp_desc" and rel >= (6, 0):
        return DESC_V60_STRUCT, TEXT_POKE_LOC_V517
    if desc_name == "bp_desc" and (5, 17) <= rel < (6, 0):
        return DESC_V56_POINTER, TEXT_POKE_LOC_V517
    return None


@dataclasses.dataclass
class Batch:
    live: bool  # a batch is in flight: the handler will look in it
    nr: int
    locs: list[PokeLoc]  # the live batch's text_poke_locs, or the last batch's (stale) when readable
    stale: bool = False  # locs are those of a batch that has finished

    @property
    def key(self) -> tuple | None:
        """Identifies a live batch (for per-batch sampling); None when there is none."""
        if not self.live or not self.locs:
            return None
        return (self.nr, self.locs[0].site, self.locs[-1].site)

    def to_json(self) -> dict:
        return {"live": self.live, "nr": self.nr, "locs": [loc.to_json() for loc in self.locs],
                "stale": self.stale}

    @classmethod
    def from_json(cls, d: dict) -> "Batch":
        return cls(d["live"], d["nr"], [PokeLoc.from_json(x) for x in d["locs"]], d.get("stale", False))


def header_read(d: DescLayout) -> int:
    """How many bytes of the descriptor to read first."""
    return d.nr_off + 4 if d.vec_inline else d.size


def parse_header(d: DescLayout, hdr: bytes, desc_addr: int) -> tuple[bool, int, int]:
    """(live, nr_entries, vector address) from the descriptor's first bytes."""
    nr = int.from_bytes(hdr[d.nr_off:d.nr_off + 4], "little", signed=True)
    if d.vec_inline:
        return nr > 0, nr, desc_addr + d.vec_off
    vec = int.from_bytes(hdr[d.vec_off:d.vec_off + 8], "little")
    live = vec != 0 and nr > 0
    if d.refs_off is not None:
        live = live and int.from_bytes(hdr[d.refs_off:d.refs_off + 4], "little", signed=True) != 0
    return live, nr, vec


def readable_count(nr: int, vec: int) -> int:
    """How many entries may be read at vec (0 when the values are not sane)."""
    return nr if vec and 0 < nr <= MAX_ENTRIES else 0


def make_batch(live: bool, nr: int, loc: StructLayout, vec_bytes: bytes | None, stext: int) -> Batch:
    n = len(vec_bytes) // loc.size if vec_bytes else 0
    locs = decode_vector(loc, vec_bytes, n, stext) if n else []
    return Batch(live, nr, locs, stale=not live and bool(locs))


# v5.2 (and the 4.14.122/4.19.46/5.0.19/5.1.5 stable trees with the seed series):
# one site at a time, in three variables of arch/x86/kernel/alternative.c.
SINGLE_SITE = ("bp_patching_in_progress", "bp_int3_addr", "bp_int3_handler")


def single_site_batch(in_progress: int, int3_addr: int, handler: int) -> Batch:
    """The v5.2 'batch': while bp_patching_in_progress, poke_int3_handler takes an int3
    whose regs->ip == bp_int3_addr (the site + 1) and sets regs->ip = bp_int3_handler.
    What is being installed is not recorded there (text is empty)."""
    if not in_progress or not int3_addr:
        return Batch(False, 0, [])
    return Batch(True, 1, [PokeLoc(0, int3_addr - 1, 0, 0, 0, b"", detour=handler)])


def era_name(handlers: list[str], desc: DescLayout | dict | None, version: str = "",
             ftrace: dict | None = None) -> str:
    """The kernel era the handlers and batch descriptor say (by what the kernel has,
    never by its version number alone). `version` ("5.10.223", from linux_banner)
    only tells a stable tree that got a later era's descriptor as a backport."""
    if isinstance(desc, dict):
        desc = DescLayout(**desc)
    if "ftrace_int3_handler" in handlers:
        return ftrace_era.era(ftrace)
    if "smp_text_poke_int3_handler" in handlers:
        return "v6.16+"
    if desc is not None and desc.is_pointer:
        return "v5.6-v5.19"
    major = version.split(".")[:2]
    if len(major) == 2 and all(p.isdigit() for p in major) and (int(major[0]), int(major[1])) < (6, 0):
        # efd608fa7403 (bp_desc a struct, v6.0) went to 5.10.148 and 5.15.72
        return "v5.6-v5.19 (bp_desc struct backported from v6.0)"
    return "v6.0-v6.15"
