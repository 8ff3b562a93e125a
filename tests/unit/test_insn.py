"""x86 semantics of what text patching installs (pure; no gdb, no VM)."""

import struct

import pytest

from gdb_ftrace.core import insn
from gdb_ftrace.core.insn import CF, OF, PF, SF, ZF, PokeLoc, expected_effect
from gdb_ftrace.core.layout import TEXT_POKE_LOC_V59, TEXT_POKE_LOC_V517

SITE = 0xFFFFFFFF81509644  # cmdline_proc_show+4 on 6.12.117 cloud (IBT: fentry at +4)


def entry(opcode, length, disp, text=b"\x00" * 5):
    return PokeLoc(0, SITE, opcode, length, disp, text)


def test_call_pushes_site_plus_5_and_jumps_to_target():
    # Recorded: CALL to ftrace_caller (0xffffffff81090b20) at cmdline_proc_show+4.
    disp = 0xFFFFFFFF81090B20 - (SITE + 5)
    e = expected_effect(entry(insn.CALL, 5, disp), SITE, 0x246, None)
    assert (e.kind, e.emulate, e.ip, e.sp_delta, e.push) == ("CALL", True, 0xFFFFFFFF81090B20, -8, SITE + 5)


def test_jmp32_and_nop5_as_jmp_plus_0():
    e = expected_effect(entry(insn.JMP32, 5, 0x23F, bytes.fromhex("e93f020000")), SITE, 0, None)
    assert (e.kind, e.ip, e.sp_delta, e.push) == ("JMP", SITE + 5 + 0x23F, 0, None)
    nop = expected_effect(entry(insn.JMP32, 5, 0, insn.NOP5), SITE, 0, None)
    assert (nop.kind, nop.ip) == ("NOP", SITE + 5)


def test_jmp8_backwards_and_nop2():
    e = expected_effect(entry(insn.JMP8, 2, -16, b"\xeb\xf0"), SITE, 0, None)
    assert e.ip == SITE + 2 - 16 and e.kind == "JMP"
    nop = expected_effect(entry(insn.JMP8, 2, 0, insn.NOP2), SITE, 0, None)
    assert (nop.kind, nop.ip) == ("NOP", SITE + 2)


def test_ret_pops_the_interrupted_stack_top():
    e = expected_effect(entry(insn.RET, 1, 0, b"\xc3"), SITE, 0, 0xFFFFFFFF81234567)
    assert (e.kind, e.ip, e.sp_delta) == ("RET", 0xFFFFFFFF81234567, 8)


def test_int3_entry_must_not_be_emulated_and_unknown_opcode_is_bug():
    assert expected_effect(entry(insn.INT3, 1, 0, b"\xcc"), SITE, 0, None).emulate is False
    assert expected_effect(entry(0x90, 1, 0, b"\x90"), SITE, 0, None).kind == "BUG"


@pytest.mark.parametrize("cc,flags,taken", [
    (0x0, OF, True), (0x0, 0, False), (0x1, 0, True),  # jo / jno
    (0x2, CF, True), (0x3, CF, False),  # jb / jae
    (0x4, ZF, True), (0x5, ZF, False),  # je / jne
    (0x6, ZF, True), (0x6, CF, True), (0x6, 0, False), (0x7, 0, True),  # jbe / ja
    (0x8, SF, True), (0x9, SF, False),  # js / jns
    (0xA, PF, True), (0xB, PF, False),  # jp / jnp
    (0xC, SF, True), (0xC, SF | OF, False), (0xD, OF, False),  # jl / jge
    (0xE, ZF, True), (0xE, 0, False), (0xF, 0, True), (0xF, ZF, False), (0xF, SF, False),  # jle / jg
])
def test_jcc_condition_from_saved_flags(cc, flags, taken):
    assert insn.jcc_taken(cc, flags) is taken
    e = expected_effect(entry(0x70 | cc, 2, 0x10, bytes([0x70 | cc, 0x10])), SITE, flags, None)
    assert e.ip == (SITE + 2 + 0x10 if taken else SITE + 2)


def test_jcc_d32_is_stored_as_jcc8_opcode_with_len_6():
    # text_poke_loc_init(): opcode = bytes[1] - 0x10, text = bytes[1..5], len 6.
    e = PokeLoc(0, SITE, 0x74, 6, 0x100, bytes.fromhex("8400010000"))
    assert e.installed == bytes.fromhex("0f8400010000")
    assert insn.classify_bytes(e.installed) == "JE32"
    assert insn.rel_target(e.installed, SITE) == SITE + 6 + 0x100
    assert expected_effect(e, SITE, ZF, None).ip == SITE + 6 + 0x100


@pytest.mark.parametrize("hexbytes,kind", [
    ("e8abcdef01", "CALL"), ("e900000000", "JMP32"), ("eb05", "JMP8"), ("c3", "RET"), ("cc", "INT3"),
    ("0f1f440000", "NOP5"), ("6690", "NOP2"), ("7510", "JNE8"), ("0f8f00000000", "JG32"), ("90", "?90"),
])
def test_classify_bytes(hexbytes, kind):
    assert insn.classify_bytes(bytes.fromhex(hexbytes)) == kind


def test_decode_loc_v517_layout_recorded_bytes():
    # A CALL entry as the 6.12 kernel stored it: rel_addr, disp, len, opcode, text, old.
    stext = 0xFFFFFFFF81000000
    raw = struct.pack("<iiBB5sB", SITE - stext, -0x478B29, 5, 0xE8, bytes.fromhex("e8d774b8ff"), 0xE8)
    e = insn.decode_loc(TEXT_POKE_LOC_V517, raw, 0, 0, stext)
    assert (e.site, e.opcode, e.length, e.disp) == (SITE, 0xE8, 5, -0x478B29)
    assert insn.rel_target(e.installed, SITE) == SITE + 5 - 0x478B29 == 0xFFFFFFFF81090B20  # ftrace_caller


def test_decode_loc_v59_v516_layout_derives_len_from_opcode():
    """Built from the v5.9-v5.16 documented layout (no `len`, `rel32` instead of
    `disp`), not recorded from a kernel of that era."""
    stext = 0xFFFFFFFF81000000
    raw = struct.pack("<iiB5sB", 0x1234, 0x40, 0xEB, bytes.fromhex("eb40000000"), 0x0F)
    e = insn.decode_loc(TEXT_POKE_LOC_V59, raw, 0, 3, stext)
    assert (e.index, e.site, e.opcode, e.length, e.disp) == (3, stext + 0x1234, 0xEB, 2, 0x40)
    assert expected_effect(e, e.site, 0, None).ip == e.site + 2 + 0x40


def test_find_loc_exact_address_only():
    es = [PokeLoc(i, SITE + 16 * i, insn.JMP32, 5, 0, insn.NOP5) for i in range(4)]
    assert insn.find_loc(es, SITE + 32).index == 2
    assert insn.find_loc(es, SITE + 33) is None


def test_site_tables_decode_relative_entries():
    """Built from the x86_64 layouts of struct jump_entry / static_call_site
    (relative fields, flag bits in key), as 6.12 stores them."""
    import struct as st

    from gdb_ftrace.core import sites

    base = 0xFFFFFFFF82596320
    site, target, key = 0xFFFFFFFF81141594, 0xFFFFFFFF811415B0, 0xFFFFFFFF83733770
    raw = st.pack("<iiq", site - base, target - (base + 4), key - (base + 8) + 1)  # +1: a flag bit
    assert sites.decode_jump_table(raw, base) == {site: (target, key)}
    sbase = 0xFFFFFFFF825B9430
    call_site, sck = 0xFFFFFFFF811CDE52, 0xFFFFFFFF82A0B3C0
    raw = st.pack("<ii", call_site - sbase, sck - (sbase + 4) + 2)
    assert sites.decode_static_call_sites(raw, sbase) == {call_site: sck}
    names = {key: "__sched_clock_stable", sck: "__SCK__preempt_schedule"}.get
    assert sites.site_kind(site, "x", {site: (target, key)}, {}, names) == "jump label __sched_clock_stable"
    assert sites.site_kind(call_site, "y", {}, {call_site: sck}, names) == "static_call preempt_schedule"
    assert sites.site_kind(5, "__SCT__pv_steal_clock", {}, {}, names) == "static_call pv_steal_clock (trampoline)"
    assert sites.site_kind(5, "cmdline_proc_show+0x4", {}, {}, names) == ""


def test_the_k8_atomic_nop5_of_older_kernels_is_a_nop5():
    # 5.10.0-32 under QEMU (qemu64, K8 nops) installs 66 66 66 66 90 at ftrace sites.
    assert insn.classify_bytes(bytes.fromhex("6666666690")) == "NOP5"
    assert insn.classify_bytes(bytes.fromhex("0f1f440000")) == "NOP5"
    assert insn.classify_bytes(bytes.fromhex("6666669090")).startswith("?")


def test_a_v54_detour_is_judged_as_a_detour():
    """v5.3-v5.5 poke_int3_handler: regs->ip = tp->detour, no emulation (jump_label.c
    sets detour = site + JUMP_LABEL_NOP_SIZE whatever is being installed)."""
    site = 0xFFFFFFFF81234560
    loc = insn.PokeLoc(0, site, 0xE9, 5, 0, bytes.fromhex("e910000000"), detour=site + 5)
    exp = insn.expected_effect(loc, site, 0, None)
    assert (exp.kind, exp.emulate, exp.ip, exp.sp_delta, exp.push) == ("DETOUR", True, site + 5, 0, None)
    assert insn.PokeLoc.from_json(loc.to_json()) == loc


def test_ftrace_records_reread_on_a_miss_once_a_second_never_for_a_jump_label():
    """v5.4.286 run (slide 0x10200000): every int3 asks ftrace_int3_handler first, so the
    44 int3s at ttwu_do_wakeup's jump label each looked the site up in the ftrace records;
    cmdline_proc_show's fentry site came with the livepatch module's records."""
    from gdb_ftrace.core import sites
    fentry, jump_site = 0xFFFFFFFF91463BF0, 0xFFFFFFFF9129231C
    now, reads = [0.0], [set(), {fentry}, {fentry}]  # what each read of the records returns
    recs = sites.FtraceRecords(lambda: reads.pop(0), lambda: now[0])
    assert recs.reads == 1 and not recs.addrs
    assert not recs.contains(jump_site, other=True) and recs.reads == 1
    now[0] = 5.0
    assert not recs.contains(jump_site, other=True) and recs.reads == 1  # a jump label: never re-read
    assert recs.contains(fentry) and recs.reads == 2  # a miss after max_age: re-read, found
    assert not recs.contains(fentry + 1) and recs.reads == 2  # within max_age of the last read
    now[0] = 6.5
    assert not recs.contains(fentry + 1) and recs.reads == 3
