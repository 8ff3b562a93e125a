"""What each fault injection writes (pure; the writes happen in gdb_layer/inject.py)."""

import json
import os

import pytest
from conftest import DATA

from gdb_ftrace.core import inject
from gdb_ftrace.core.insn import CALL, JMP32

SITE = 0xFFFFFFFF81509644  # cmdline_proc_show+0x4 on 6.12.117


@pytest.fixture(scope="module")
def entry_code():
    """asm_exc_int3 as gdb disassembled it from the 6.12.117 vmlinux, with its bytes."""
    d = json.load(open(os.path.join(DATA, "asm_exc_int3-6.12.117-cloud.json")))
    raw = bytes.fromhex(d["bytes"])
    return [tuple(i) for i in d["insns"]], (lambda a, n: raw[a - d["start"]:a - d["start"] + n]), d["start"]


def test_no_gap_turns_the_from_user_test_into_a_jump(entry_code):
    code, read, start = entry_code
    patch, restore = inject.gap_branch(code, read)
    assert patch.addr == start + 15  # `jne asm_exc_int3+41` after `testb $0x3,0x10(%rsp)`
    assert restore.data == bytes.fromhex("7518") and patch.data == bytes.fromhex("eb18")


def test_no_gap_rel32_form_keeps_the_destination():
    code = [(0x100, 5, "testb  $0x3,0x10(%rsp)"), (0x105, 6, "jne    0x200"), (0x10b, 4, "push   0x28(%rsp)")]
    raw = {0x105: bytes.fromhex("0f85f1000000")}
    patch, restore = inject.gap_branch(code, lambda a, n: raw[a][:n])
    assert patch.data == bytes.fromhex("90e9f1000000")  # nop; jmp rel32: same end, same target


def test_no_gap_refuses_code_without_the_gap_sequence():
    code = [(0x100, 4, "endbr64"), (0x104, 2, "jne    0x120"), (0x106, 5, "call   0x300")]
    with pytest.raises(ValueError, match="no 'testb"):
        inject.gap_branch(code, lambda a, n: b"\x75\x10")


def test_skip_call_resumes_after_the_site_with_nothing_pushed():
    regs, sp0 = 0xFFFFC90000443C98, 0xFFFFC90000443D40
    ws = inject.skip_call(regs, 128, 152, SITE, sp0)
    assert [(w.addr, int.from_bytes(w.data, "little")) for w in ws] == [(regs + 128, SITE + 5), (regs + 152, sp0)]


def test_wrong_return_corrupts_then_repairs_the_same_word():
    bad, good = inject.wrong_return(0xFFFFC90000443D38, SITE)
    assert bad.addr == good.addr == 0xFFFFC90000443D38
    assert int.from_bytes(bad.data, "little") == SITE + 5 + inject.WRONG_RETURN_OFFSET
    assert int.from_bytes(good.data, "little") == SITE + 5


def test_only_emulated_calls_are_changed():
    assert inject.is_emulated_call(1, CALL)
    assert not inject.is_emulated_call(0, CALL) and not inject.is_emulated_call(1, JMP32)
    assert not inject.is_emulated_call(1, None)
