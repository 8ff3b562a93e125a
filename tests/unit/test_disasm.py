"""Return points of the handler, from exc_int3 as disassembled by gdb on 6.12.117."""

import json
import os

from conftest import DATA

from gdb_ftrace.core.disasm import call_return_sites


def test_exc_int3_recorded():
    d = json.load(open(os.path.join(DATA, "exc_int3-6.12.117-cloud.json")))
    sites = call_return_sites([tuple(i) for i in d["insns"]], d["callee"])
    assert sites == [0xFFFFFFFF81C908AE]  # exc_int3+0xe, after `call poke_int3_handler`


def test_only_direct_calls_to_the_callee():
    insns = [(0x10, 5, "call   0x100 <h>"), (0x15, 5, "call   0x200 <other>"),
             (0x1a, 6, "call   *0x100(%rip)"), (0x20, 5, "callq  0x100 <h>")]
    assert call_return_sites(insns, 0x100) == [0x15, 0x25]
