"""v5.2 - v5.5: ftrace's own int3 handler, pure.

The engines read its state (core.facts.KernelFacts.read_decision) when the
handler is entered; verdict._judge_ftrace_era judges by it.

Before v5.6 ftrace patched its call sites itself and do_int3() asked
`ftrace_int3_handler()` (arch/x86/kernel/ftrace.c) first, while
`modifying_ftrace_code` was non-zero. Upstream 9e298e860408 (v5.2, and the
stable backports 4.14.122, 4.19.46, 5.0.19, 5.1.5) made it emulate a CALL
instead of skipping the site:

    ip = regs->ip - INT3_INSN_SIZE;
    if (ftrace_location(ip)) {                      /* any fentry site */
        int3_emulate_call(regs, (unsigned long)ftrace_regs_caller);
        return 1;
    } else if (is_ftrace_caller(ip)) {              /* ip == ftrace_update_func */
        if (!ftrace_update_func_call) {
            int3_emulate_jmp(regs, ip + CALL_INSN_SIZE);
            return 1;
        }
        int3_emulate_call(regs, ftrace_update_func_call);
        return 1;
    }
    return 0;

There is no batch vector: what is being installed is not consulted. At an
fentry site the emulated call always goes to ftrace_regs_caller, whose list
walker runs every registered handler (that is what keeps livepatch right),
whether the site is becoming a CALL or a NOP. The call inside an ftrace
trampoline (ftrace_call / ftrace_regs_call) being rewritten goes to the new
function, or is jumped over while ftrace_update_func_call is 0 (the graph
caller's JMP update). Before 9e298e860408 the handler did
`regs->ip += MCOUNT_INSN_SIZE - 1`: the site acted as a NOP, and a
livepatched function's old body ran. The checker calls that WRONG-TARGET.

A kernel from before the series (v4.x-v5.1, and the 4.14/4.19 stable trees
before .122/.46; 4.9 and 4.4 never got it) is known from its code: it has
no `ftrace_update_func_call` (FtraceState.update_func_call is None). Its
skips are judged by the same rule, the installed instruction is what must
happen, so they are WRONG-TARGET, and the reasons say that this is the
kernel's own pre-series behaviour (PRE_SERIES), not a checker error.
"""

from __future__ import annotations

import dataclasses

from .insn import CALL_INSN_SIZE, MASK64, Expected

HANDLER = "ftrace_int3_handler"
ERA = "v5.2-v5.5"
PRE_SERIES_ERA = "v4.x-v5.1 (ftrace_int3_handler skips the call: before the 2019 series)"
PRE_SERIES = ("this kernel's ftrace_int3_handler is from before 9e298e860408 \"x86_64/ftrace: Emulate calls from "
              "int3 when patching functions\" (v5.2; stable 5.1.5, 5.0.19, 4.19.46, 4.14.122; never 4.9, 4.4): it "
              "skips the call site (regs->ip += MCOUNT_INSN_SIZE - 1), so a livepatched function's old body runs. "
              "The kernel's own behaviour, not a checker error: the fix is that series")


def era(ftrace: dict | None) -> str:
    """ftrace_int3_handler's era from the kernel's ftrace facts: no ftrace_update_func_call, no series."""
    return PRE_SERIES_ERA if ftrace is not None and ftrace.get("update_func_call") is None else ERA


@dataclasses.dataclass(frozen=True)
class FtraceState:
    """What ftrace_int3_handler decides by, read when the handler is entered."""

    modifying: int  # atomic_t modifying_ftrace_code (do_int3 only calls the handler when != 0)
    is_location: bool  # ftrace_location(site) != 0: the site is an fentry site
    update_func: int  # ftrace_update_func: the trampoline call site being rewritten (0: none)
    update_func_call: int | None  # ftrace_update_func_call: its new target (0: a JMP update; None: pre-series kernel)
    regs_caller: int  # &ftrace_regs_caller

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def claims(site: int, st: FtraceState) -> bool:
    """ftrace_int3_handler takes the int3 at `site` (returns 1): do_int3 asks it only while
    modifying_ftrace_code != 0, and it handles an fentry site or the trampoline call being
    rewritten (is_ftrace_caller: site == ftrace_update_func); else poke_int3_handler is asked."""
    return st.modifying != 0 and (st.is_location or bool(st.update_func) and site == st.update_func)


def expected_effect(site: int, st: FtraceState) -> Expected:
    """What ftrace_int3_handler must do for an int3 at `site`."""
    ret_addr = (site + CALL_INSN_SIZE) & MASK64
    if st.is_location:
        return Expected("CALL", True, ip=st.regs_caller, sp_delta=-8, push=ret_addr, target=st.regs_caller)
    if st.update_func and site == st.update_func:
        if st.update_func_call is None:  # pre-series: the call being installed is not recorded anywhere
            return Expected("CALL", True, ip=None, sp_delta=-8, push=ret_addr, target=None)
        if st.update_func_call == 0:
            return Expected("JMP", True, ip=ret_addr, target=ret_addr)
        return Expected("CALL", True, ip=st.update_func_call, sp_delta=-8, push=ret_addr,
                        target=st.update_func_call)
    return Expected("NONE", emulate=False)
