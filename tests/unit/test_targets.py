"""Naming ftrace direct-call targets (core.targets), and the recorded
direct-call run (tests/data/direct-call-6.12.117-cloud.jsonl: `ftrace-int3-check
--scenario direct-call --toggles 20` on 6.12.117+deb12-cloud-amd64, MODE=full,
PASS; entry records left out): vm-images/directcall/gdb_ftrace_direct.ko
registered and unregistered an ftrace direct call on vfs_read 20 times while
CPU1 read /proc/cmdline, and the int3 handler emulated the CALL into the
module's trampoline."""

import copy
import os
import struct

import pytest
from conftest import DATA

from gdb_ftrace.core import report, targets
from gdb_ftrace.core.verdict import finalize

RECORDED = os.path.join(DATA, "direct-call-6.12.117-cloud.jsonl")
SITE = "vfs_read+0x4"  # fentry after endbr64 (IBT)
DIRECT_NAME = "direct call gdb_ftrace_direct_tramp [gdb_ftrace_direct] (ftrace_ops direct)"

# struct ftrace_ops on 6.12.117+deb12-cloud-amd64 (ptype/o from the -dbg vmlinux)
OPS_OFFSETS = {"func": 0, "next": 8, "flags": 16, "trampoline": 144, "trampoline_size": 152,
               "direct_call": 208}
OPS_SIZE = 216
FTRACE_OPS_FL_DIRECT = 1 << 17  # 131072 in that kernel's DWARF


@pytest.fixture(scope="module")
def recorded():
    events, meta = report.load_events(RECORDED)
    assert meta["kernel"]["handler"] == "poke_int3_handler"
    return events


def _direct_calls(events):
    return [ev for ev in events if ev.site_sym == SITE and ev.expected and ev.expected.kind == "CALL"]


def test_rejudging_the_recorded_direct_call_run_gives_the_recorded_verdicts(recorded):
    for ev in recorded:
        fresh = copy.deepcopy(ev)
        fresh.verdict, fresh.reasons, fresh.expected = "", [], None
        assert finalize(fresh).verdict == ev.verdict, ev.seq
    assert all(ev.verdict in ("VERIFIED", "OTHER") for ev in recorded)


def test_recorded_calls_go_into_the_named_direct_trampoline(recorded):
    calls = _direct_calls(recorded)
    assert len(calls) >= 20
    assert {ev.target_sym for ev in calls} == {DIRECT_NAME}
    for ev in calls:
        assert ev.verdict == "VERIFIED"
        assert ev.pushed == ev.site + 5
        assert ev.after["sp"] == ev.before["sp"] - 8
        assert ev.after["ip"] == ev.expected.target
        # The trampoline is in module space, not in vmlinux.
        assert ev.expected.target >= 0xffffffffc0000000
        assert ev.landing  # followed through the iretq to the trampoline's first insn
    # Unregistering patches the site back: NOP5, emulated as a jump to site+5.
    nops = [ev for ev in recorded if ev.site_sym == SITE and ev.expected and ev.expected.kind == "NOP"]
    assert nops and {ev.target_sym for ev in nops} == {"vfs_read+0x9"}
    rows = report.group_rows(recorded)
    assert any(r[0] == SITE and r[3] == "CALL" and r[4] == DIRECT_NAME and r[5] == "VERIFIED" for r in rows)


def _ops_bytes(**fields):
    buf = bytearray(OPS_SIZE)
    for k, v in fields.items():
        struct.pack_into("<Q", buf, OPS_OFFSETS[k], v)
    return bytes(buf)


def _module(tramp):
    """An Elf64_Sym table + strtab like gdb_ftrace_direct.ko's kallsyms."""
    strtab = b"\0gdb_ftrace_direct_tramp\0direct\0__this_module\0"
    syms = b"".join(targets.ELF64_SYM.pack(*s) for s in (
        (0, 0, 0, 0, 0, 0),  # the null symbol
        (1, 0x10 | targets.STT_FUNC, 0, 1, tramp, 0x1f),  # global function, .size from the asm
        (25, targets.STT_OBJECT, 0, 3, tramp + 0x2040, OPS_SIZE),  # static struct ftrace_ops direct
        (32, 0x10 | targets.STT_OBJECT, 0, 4, tramp + 0x3000, 0x500),
    ))
    return syms, strtab


def test_name_of_a_direct_call_from_its_ftrace_ops_and_the_module_symbols(recorded):
    tramp = _direct_calls(recorded)[0].expected.target
    ops_addr = tramp + 0x2040
    ops, nxt = targets.decode_ftrace_ops(
        _ops_bytes(func=0xffffffff811f0000, next=0xffffffff82c3b1c0, flags=FTRACE_OPS_FL_DIRECT | 1,
                   trampoline=0xffffffff81e6f2a0, direct_call=tramp), ops_addr, OPS_OFFSETS)
    assert nxt == 0xffffffff82c3b1c0 and ops.direct_call == tramp and ops.trampoline_size == 0
    syms, strtab = _module(tramp)
    decoded = targets.decode_elf64_syms(syms)

    def name_of(addr):
        hit = targets.symbol_covering(addr, decoded)
        return targets.module_symbol(targets.cstring(strtab, hit[0]), hit[1], "gdb_ftrace_direct") if hit else ""

    assert name_of(tramp + 0x11) == "gdb_ftrace_direct_tramp+0x11 [gdb_ftrace_direct]"
    assert name_of(tramp + 0x1f) == ""
    assert targets.name_target(tramp, [ops], FTRACE_OPS_FL_DIRECT, name_of=name_of) == DIRECT_NAME
    # Without module symbols (a BPF trampoline, a kmalloc'ed ops): the addresses.
    assert (targets.name_target(tramp, [ops], FTRACE_OPS_FL_DIRECT)
            == f"direct call {tramp:#x} (ftrace_ops {ops_addr:#x})")
    # direct_call left behind by an ops that is not (or no longer) a direct one: not named as one.
    stale = targets.FtraceOps(addr=ops_addr, flags=1, direct_call=tramp)
    assert targets.name_target(tramp, [stale], FTRACE_OPS_FL_DIRECT, name_of=name_of) == \
        "gdb_ftrace_direct_tramp [gdb_ftrace_direct]"


def test_ftrace_ops_trampolines_and_unknown_targets_keep_their_names():
    tramp = targets.FtraceOps(addr=0xffffffffc0005000, func=0xffffffff81234560,
                              trampoline=0xffffffffa0001000, trampoline_size=0x100)
    funcs = {0xffffffff81234560: "klp_ftrace_handler"}
    assert (targets.name_target(0xffffffffa0001000, [tramp], FTRACE_OPS_FL_DIRECT, func_name=funcs.get)
            == "ftrace_ops trampoline (klp_ftrace_handler)")
    assert (targets.name_target(0xffffffffa0001010, [tramp], None, func_name=lambda a: "")
            == "ftrace_ops trampoline+0x10 (0xffffffff81234560)")
    assert targets.name_target(0xffffffffa0002000, [tramp], FTRACE_OPS_FL_DIRECT) == ""
    # A kernel before v6.6 has no direct_call field: it reads as 0, nothing is a direct call.
    ops, _ = targets.decode_ftrace_ops(_ops_bytes(trampoline=0xffffffffa0001000),
                                       0xffffffffc0005000, {k: v for k, v in OPS_OFFSETS.items()
                                                            if k != "direct_call"})
    assert ops.direct_call == 0 and targets.name_target(0, [ops], None) == ""
