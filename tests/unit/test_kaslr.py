"""KASLR arithmetic on what a live 6.12.117 guest showed (QEMU 7.2, `monitor info
registers` and `x/2gx` of IDT gate 3, booted without nokaslr), and the ELF reader."""

import os
import struct

import pytest

from gdb_ftrace.core import elf, kaslr

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
# 6.12.117+deb12-cloud-amd64: asm_exc_int3 in vmlinux, and gate 3 as the guest had it.
LINK_ASM_EXC_INT3 = 0xFFFFFFFF81E01240
GATE3 = struct.pack("<QQ", 0xA7C0EE0000101240, 0x00000000FFFFFFFF)


def test_idt_base_from_qemu_info_registers():
    text = open(os.path.join(DATA, "qemu-info-registers-6.12-kaslr.txt")).read()
    assert kaslr.parse_idt(text) == (0xFFFFFE0000000000, 0xFFF)
    assert kaslr.parse_idt("GDT=     fffffe34104f8000 0000007f\n") is None


def test_gate_target_and_the_slide():
    assert kaslr.gate_present(GATE3)
    runtime = kaslr.gate_target(GATE3)
    assert runtime == 0xFFFFFFFFA7C01240
    assert kaslr.slide_for(runtime, LINK_ASM_EXC_INT3) == 0x25E00000
    assert kaslr.slide_for(LINK_ASM_EXC_INT3, LINK_ASM_EXC_INT3) == 0  # nokaslr


def test_not_a_slide_early_boot_reset_and_below_the_link_address():
    # Before idt_setup_early_traps gate 3 points into early_idt_handler_array: not a 2 MiB move.
    assert kaslr.slide_for(LINK_ASM_EXC_INT3 + 0x25E00000 + 27, LINK_ASM_EXC_INT3) is None
    assert kaslr.slide_for(0xFFF0, LINK_ASM_EXC_INT3) is None  # reset vector, real mode
    assert kaslr.slide_for(LINK_ASM_EXC_INT3 - 0x200000, LINK_ASM_EXC_INT3) is None
    assert not kaslr.gate_present(bytes(16))
    with pytest.raises(ValueError):
        kaslr.gate_target(bytes(8))


def test_banner_search_skips_format_strings_and_reads_the_release():
    banner = (b"Linux version 6.12.117+deb12-cloud-amd64 (debian-kernel@lists.debian.org) "
              b"(x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0) #1 SMP\0")
    buf = b"\0junk Linux version %s (%s)\0" + b"x" * 100 + banner + b"more"
    i = kaslr.find_banner(buf)
    assert i == buf.index(banner)
    text = kaslr.banner_text(buf[i:])
    assert text == banner[:-1].decode()
    assert kaslr.release(text) == "6.12.117+deb12-cloud-amd64"
    assert kaslr.find_banner(b"Linux version %s\0") is None


def _tiny_elf(addr: int, payload: bytes) -> bytes:
    """An ELF64 file: a null section, `.rodata` (PROGBITS) at addr, `.data..percpu` at 0,
    and the section name table."""
    names = b"\0.rodata\0.data..percpu\0.shstrtab\0"
    shoff = 64 + len(payload) + len(names)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 4, 3)

    def sec(name, typ, a, off, size):
        return struct.pack("<IIQQQQ", name, typ, 2, a, off, size) + bytes(64 - 40)
    return (bytes(header) + payload + names + bytes(64) + sec(1, 1, addr, 64, len(payload))
            + sec(9, 1, 0, 64, 8) + sec(23, 3, 0, 64 + len(payload), len(names)))


def test_elf_read_at_a_link_address(tmp_path):
    p = tmp_path / "vmlinux"
    p.write_bytes(_tiny_elf(0xFFFFFFFF82000000, b"Linux version 1.2.3 (x)\0tail"))
    assert elf.read_at(str(p), 0xFFFFFFFF82000000, 13) == b"Linux version"
    assert elf.read_at(str(p), 0xFFFFFFFF82000000 + 24, 100) == b"tail"  # clipped at the section's end
    with pytest.raises(elf.ElfError):
        elf.read_at(str(p), 0xFFFFFFFF81000000, 4)
    assert elf.section_addr(str(p), ".rodata") == 0xFFFFFFFF82000000
    assert elf.section_addr(str(p), ".data..percpu") == 0  # what relocate() keeps at 0
    assert elf.section_addr(str(p), ".text") is None
    (tmp_path / "not-elf").write_bytes(b"#!/bin/sh\n" + bytes(80))
    with pytest.raises(elf.ElfError):
        elf.read_at(str(tmp_path / "not-elf"), 0, 4)
