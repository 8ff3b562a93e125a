"""One test set per kernel era the checker knows (docs/eras.md; the handlers in arch/x86/kernel/alternative.c and ftrace.c).

Booted and recorded here: v6.0-v6.15 (6.12.117 and 6.1.0-56 Debian cloud
kernels, tests/data). The other eras have no kernel we can boot on this
machine, so their tests are BUILT FROM THE ERA'S DOCUMENTED LAYOUT AND
SEMANTICS (the upstream source quoted in each docstring), reusing the
registers of a recorded 6.12 event where registers are needed. They are
marked `documented_layout` so it is clear they are not recordings.
"""

import copy
import os
import struct

import pytest
from conftest import DATA

from gdb_ftrace.core import batch, ftrace_era, insn, report
from gdb_ftrace.core.insn import PokeLoc
from gdb_ftrace.core.layout import TEXT_POKE_LOC_V59, TEXT_POKE_LOC_V517, StructLayout
from gdb_ftrace.core.event import Int3Event
from gdb_ftrace.core.verdict import judge

documented_layout = pytest.mark.documented_layout

STEXT = 0xFFFFFFFF81000000
DESC_ADDR = 0xFFFFFFFF83400000


@pytest.fixture(scope="module")
def recorded_call():
    """A VERIFIED CALL at cmdline_proc_show+0x4 from the 6.12 MODE=full recording."""
    events, _ = report.load_events(os.path.join(DATA, "livepatch-trace-6.12.117-cloud-full.jsonl"))
    ev = next(e for e in events if e.verdict == "VERIFIED" and e.expected.kind == "CALL")
    return ev


def encode(layout: StructLayout, e: PokeLoc) -> bytes:
    """The bytes a kernel of that era stores for entry `e` (inverse of insn.decode_loc)."""
    buf = bytearray(layout.size)

    def put(name, value):
        f = layout.fields[name]
        buf[f.offset:f.offset + f.size] = value.to_bytes(f.size, "little", signed=f.signed)

    put("rel_addr", e.site - STEXT)
    put("disp" if layout.has("disp") else "rel32", e.disp)
    if layout.has("len"):
        put("len", e.length)
    put("opcode", e.opcode)
    f = layout.fields["text"]
    buf[f.offset:f.offset + f.size] = e.text[:f.size]
    return bytes(buf)


def rejudge(ev: Int3Event, **changes) -> Int3Event:
    ev = copy.deepcopy(ev)
    for k, v in changes.items():
        setattr(ev, k, v)
    ev.verdict, ev.reasons, ev.expected = judge(ev)
    return ev


# --- v6.16+: static struct smp_text_poke_array { vec[TEXT_POKE_ARRAY_MAX]; int nr_entries; } ---

@documented_layout
def test_v616_text_poke_array_inline_vector(recorded_call):
    """arch/x86/kernel/alternative.c v6.16: vec[] is inline (256 x 16-byte
    smp_text_poke_loc, the v5.17+ field order), nr_entries follows it and is
    zeroed when the batch ends; refs are per CPU (text_poke_array_refs)."""
    d = batch.DESC_V616_ARRAY
    e = recorded_call.loc
    others = [PokeLoc(i, e.site - 0x1000 + 0x40 * i, insn.JMP32, 5, 0, insn.NOP5) for i in range(3)]
    vec = [*others, PokeLoc(3, e.site, e.opcode, e.length, e.disp, e.text)]
    blob = bytearray(d.size)
    for i, pe in enumerate(vec):
        blob[d.vec_off + 16 * i:d.vec_off + 16 * (i + 1)] = encode(TEXT_POKE_LOC_V517, pe)
    struct.pack_into("<i", blob, d.nr_off, len(vec))

    live, nr, vec_addr = batch.parse_header(d, bytes(blob[:batch.header_read(d)]), DESC_ADDR)
    assert (live, nr, vec_addr) == (True, 4, DESC_ADDR)  # the vector is inside the descriptor
    b = batch.make_batch(live, nr, TEXT_POKE_LOC_V517, bytes(blob[:16 * nr]), STEXT)
    found = insn.find_loc(b.locs, e.site)
    assert found.index == 3 and (found.opcode, found.length, found.disp) == (e.opcode, e.length, e.disp)
    assert rejudge(recorded_call, loc=found, batch_nr=nr).verdict == "VERIFIED"

    # After the batch: nr_entries = 0, nothing is live or readable any more.
    struct.pack_into("<i", blob, d.nr_off, 0)
    live, nr, _ = batch.parse_header(d, bytes(blob[:batch.header_read(d)]), DESC_ADDR)
    assert not live and batch.readable_count(nr, DESC_ADDR) == 0


# --- v6.0-v6.15: static struct bp_patching_desc bp_desc { vec *, nr_entries, refs } ---

def test_v60_bp_desc_keeps_the_last_batch_for_a_late_int3(recorded_call):
    """Booted era (6.1, 6.12): after the batch refs drop to 0 but vec and
    nr_entries stay. An int3 that arrives then is MISSED, and says which batch
    entry it was."""
    d = batch.DESC_V60_STRUCT
    hdr = struct.pack("<Qii", 0xFFFF888004000000, 1, 0)  # refs == 0: finished
    live, nr, vec = batch.parse_header(d, hdr, DESC_ADDR)
    assert not live and batch.readable_count(nr, vec) == 1
    b = batch.make_batch(live, nr, TEXT_POKE_LOC_V517, encode(TEXT_POKE_LOC_V517, recorded_call.loc), STEXT)
    assert b.stale
    late = rejudge(recorded_call, loc=None, stale_loc=b.locs[0], batch_nr=None, ret=0,
                   after=dict(recorded_call.before), landing=None)
    assert late.verdict == "MISSED" and "batch that had just finished" in late.reasons[0]
    # The same int3 while refs != 0 is in the live batch.
    live, _, _ = batch.parse_header(d, struct.pack("<Qii", 0xFFFF888004000000, 1, 1), DESC_ADDR)
    assert live


# --- v5.6-v5.19: static struct bp_patching_desc *bp_desc (NULL when no batch) ---

@documented_layout
def test_v56_bp_desc_pointer_and_v59_entry_without_len(recorded_call):
    """v5.6-v5.19 publish the batch through a pointer that is NULL outside a
    batch (the gdb layer reads it first); v5.9-v5.16 entries have no `len`
    and call the displacement rel32 (the length comes from the opcode)."""
    d = batch.DESC_V56_POINTER
    assert d.is_pointer
    live, nr, vec = batch.parse_header(d, struct.pack("<Qii", 0xFFFF888004000000, 1, 1), DESC_ADDR)
    assert live and nr == 1 and vec == 0xFFFF888004000000
    e = recorded_call.loc
    raw = encode(TEXT_POKE_LOC_V59, e)
    found = batch.make_batch(live, nr, TEXT_POKE_LOC_V59, raw, STEXT).locs[0]
    assert (found.site, found.opcode, found.length, found.disp) == (e.site, 0xE8, 5, e.disp)
    assert rejudge(recorded_call, loc=found).verdict == "VERIFIED"


# --- v5.2-v5.5: ftrace_int3_handler, no batch ---

REGS_CALLER = 0xFFFFFFFF81C01A50  # &ftrace_regs_caller (any address: only compared)


def ftrace_event(recorded, *, is_location=True, update_func=0, update_func_call=0, after_ip=None,
                 after_sp=None, pushed=None, ret=1):
    ev = copy.deepcopy(recorded)
    ev.loc, ev.landing, ev.hw_frame, ev.hw_source = None, None, None, ""
    ev.handler = ftrace_era.HANDLER
    ev.ftrace = ftrace_era.FtraceState(1, is_location, update_func, update_func_call, REGS_CALLER).to_json()
    sp0 = ev.before["sp"]
    ev.ret = ret
    ev.after = {"ip": after_ip if after_ip is not None else REGS_CALLER,
                "sp": after_sp if after_sp is not None else sp0 - 8}
    ev.pushed = pushed if pushed is not None else ev.site + 5
    ev.verdict, ev.reasons, ev.expected = judge(ev)
    return ev


@documented_layout
def test_v52_fentry_site_always_calls_ftrace_regs_caller(recorded_call):
    """9e298e860408: at any ftrace_location() the handler emulates a CALL to
    ftrace_regs_caller, whatever the site is becoming."""
    ev = ftrace_event(recorded_call)
    assert ev.verdict == "VERIFIED", ev.reasons
    assert ev.expected.target == REGS_CALLER and ev.expected.push == ev.site + 5


@documented_layout
def test_v51_skip_behaviour_is_wrong_target(recorded_call):
    """Before the seed: regs->ip += MCOUNT_INSN_SIZE - 1, the site acts as a
    NOP and a livepatched function's old body runs."""
    sp0 = recorded_call.before["sp"]
    ev = ftrace_event(recorded_call, after_ip=recorded_call.site + 5, after_sp=sp0, pushed=None)
    assert ev.verdict == "WRONG-TARGET"
    assert f"expected {REGS_CALLER:#x}" in ev.reasons[0]
    assert any(r.startswith("regs->sp") for r in ev.reasons)


@documented_layout
def test_v52_trampoline_call_being_rewritten(recorded_call):
    """is_ftrace_caller(ip): ip == ftrace_update_func. With
    ftrace_update_func_call == 0 (graph caller JMP update) it jumps over the
    call; otherwise it calls the new function."""
    site = recorded_call.site
    jmp = ftrace_event(recorded_call, is_location=False, update_func=site, update_func_call=0,
                       after_ip=site + 5, after_sp=recorded_call.before["sp"])
    assert jmp.verdict == "VERIFIED" and jmp.expected.kind == "JMP"
    new = 0xFFFFFFFF8123F000
    call = ftrace_event(recorded_call, is_location=False, update_func=site, update_func_call=new,
                        after_ip=new)
    assert call.verdict == "VERIFIED" and call.expected.target == new
    wrong = ftrace_event(recorded_call, is_location=False, update_func=site, update_func_call=new,
                         after_ip=REGS_CALLER)
    assert wrong.verdict == "WRONG-TARGET"


@documented_layout
def test_v52_not_ftrace_missed_and_unexpected(recorded_call):
    other = ftrace_event(recorded_call, is_location=False, ret=0, after_ip=recorded_call.before["ip"],
                         after_sp=recorded_call.before["sp"])
    assert other.verdict == "OTHER"
    unexpected = ftrace_event(recorded_call, is_location=False)
    assert unexpected.verdict == "UNEXPECTED-EMULATION"
    missed = ftrace_event(recorded_call, ret=0, after_ip=recorded_call.before["ip"],
                          after_sp=recorded_call.before["sp"])
    assert missed.verdict == "MISSED" and "ftrace_location" in missed.reasons[0]


def test_ftrace_state_round_trips_through_json(recorded_call):
    ev = ftrace_event(recorded_call)
    back = Int3Event.from_json(ev.to_json())
    assert back.ftrace == ev.ftrace and judge(back)[0] == "VERIFIED"


@documented_layout
def test_v616_missed_names_the_per_cpu_refs_race(recorded_call):
    """v6.16+ smp_text_poke_int3_handler returns 0 unless this CPU's
    text_poke_array_refs can be taken (try_get_text_poke_array()); an int3
    that arrives after the last sync but before nr_entries is cleared finds
    refs == 0 (the June 2025 LKFT 'Oops: int3' thread)."""
    ev = rejudge(recorded_call, ret=0, after=dict(recorded_call.before), landing=None, cpu_refs=0)
    assert ev.verdict == "MISSED"
    assert "text_poke_array_refs of cpu1 was already 0" in ev.reasons[1]
    assert len(rejudge(recorded_call, ret=0, after=dict(recorded_call.before), landing=None,
                       cpu_refs=1).reasons) == 1


@pytest.mark.documented_layout
def test_v52_single_site_is_a_detour_to_bp_int3_handler():
    """v5.2 (and the 4.14/4.19/5.0/5.1 stable trees with the seed series): poke_int3_handler
    takes one site while bp_patching_in_progress, regs->ip == bp_int3_addr (site + 1),
    and sets regs->ip = bp_int3_handler. No v5.2 kernel can be booted here: the rule is
    built from that tree's alternative.c."""
    site, handler = 0xFFFFFFFF81234560, 0xFFFFFFFF81234565
    assert not batch.single_site_batch(0, site + 1, handler).live
    b = batch.single_site_batch(1, site + 1, handler)
    assert b.live and b.nr == 1 and b.locs[0].site == site and b.locs[0].detour == handler
    ev = Int3Event(seq=1, cpu=0, regs_addr=0x1000, before={"ip": site + 1, "sp": 0x3000, "flags": 2, "cs": 0x10},
                   site=site, batch_nr=1, loc=b.locs[0], ret=1, after={"ip": handler, "sp": 0x3000})
    verdict, reasons, exp = judge(ev)
    assert (verdict, exp.kind) == ("VERIFIED", "DETOUR"), reasons
    ev.after = {"ip": site + 1, "sp": 0x3000}  # the int3 consumed, the CPU not sent anywhere
    ev.verdict, ev.reasons, ev.expected = judge(ev)
    assert ev.verdict == "WRONG-TARGET"
    assert report.group_rows([ev])[0][2] == "-"  # nothing recorded as being installed


def test_documented_layouts_without_dwarf_by_descriptor_and_release():
    from gdb_ftrace.core.batch import DESC_V56_POINTER, DESC_V60_STRUCT, DESC_V616_ARRAY, documented
    from gdb_ftrace.core.layout import TEXT_POKE_LOC_V517

    assert documented("text_poke_array", "6.16.1") == (DESC_V616_ARRAY, TEXT_POKE_LOC_V517)
    assert documented("bp_desc", "6.12.117+deb12-cloud-amd64") == (DESC_V60_STRUCT, TEXT_POKE_LOC_V517)
    assert documented("bp_desc", "6.1.0-56-cloud-amd64") == (DESC_V60_STRUCT, TEXT_POKE_LOC_V517)
    assert documented("bp_desc", "5.17.3") == (DESC_V56_POINTER, TEXT_POKE_LOC_V517)
    # 5.10.y: its text_poke_loc depends on the stable release (backport); only DWARF knows.
    assert documented("bp_desc", "5.10.0-32-cloud-amd64") is None
    assert documented("bp_patching", "5.4.286") is None
    assert documented("bp_desc", "") is None


def _matrix_kernels():
    """What gdb read from DWARF on each kernel of `make matrix` (2026-11-26): the meta
    record of each run's event log."""
    import json

    with open(os.path.join(DATA, "kernel-meta-matrix-20261126.jsonl")) as f:
        return [json.loads(line)["kernel"] for line in f]


def test_documented_layouts_equal_what_dwarf_said_on_real_kernels():
    """The no-DWARF layouts, against the layouts gdb read from DWARF of the same kernels;
    and the kernels that have none are the ones whose layout moved in stable series."""
    from gdb_ftrace.core.batch import documented

    seen = []
    for k in _matrix_kernels():
        got = documented(k["descriptor"]["name"], k["version"])
        if got is None:
            seen.append((k["version"], None))
            continue
        desc, loc = got
        assert desc.to_json() == k["descriptor"], k["version"]
        assert loc.size == k["loc_layout"]["size"]
        assert {n: [f.offset, f.size, f.signed] for n, f in loc.fields.items()} == k["loc_layout"]["fields"]
        seen.append((k["version"], desc.name))
    assert seen == [("5.10.0-32-cloud-amd64", None), ("6.1.0-56-cloud-amd64", "bp_desc"),
                    ("6.12.117+deb12-cloud-amd64", "bp_desc"), ("7.3.4+deb13-cloud-amd64", "text_poke_array")]


# --- before the series (v4.x-v5.1): no ftrace_update_func_call, every site skipped ---

@documented_layout
def test_pre_series_skips_are_wrong_target_and_named_as_the_kernels_own(recorded_call):
    sp0 = recorded_call.before["sp"]
    fentry = ftrace_event(recorded_call, update_func_call=None, after_ip=recorded_call.site + 5, after_sp=sp0)
    assert fentry.verdict == "WRONG-TARGET" and fentry.reasons[-1] == ftrace_era.PRE_SERIES
    site = recorded_call.site
    tramp = ftrace_event(recorded_call, is_location=False, update_func=site, update_func_call=None,
                         after_ip=site + 5, after_sp=sp0)
    assert tramp.verdict == "WRONG-TARGET" and "skipped the trampoline call" in tramp.reasons[0]
    odd = ftrace_event(recorded_call, is_location=False, update_func=site, update_func_call=None,
                       after_ip=REGS_CALLER)
    assert odd.verdict == "OTHER" and "not judged" in odd.reasons[0]
    # A post-series kernel's WRONG-TARGET carries no such note.
    post = ftrace_event(recorded_call, after_ip=site + 5, after_sp=sp0)
    assert post.verdict == "WRONG-TARGET" and ftrace_era.PRE_SERIES not in post.reasons


def test_the_era_comes_from_the_code():
    handlers = ["ftrace_int3_handler", "poke_int3_handler"]
    assert batch.era_name(handlers, None, "4.19.45", {"update_func_call": None}) == ftrace_era.PRE_SERIES_ERA
    assert batch.era_name(handlers, None, "4.19.46", {"update_func_call": 0xFFFFFFFF82000000}) == "v5.2-v5.5"
