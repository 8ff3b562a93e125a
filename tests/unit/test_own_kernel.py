"""A kernel the user built: the .config rules (core.kconfig) on real configs, the
known toolchain errors (core.toolchain) on their real compiler and linker texts."""

import gzip
import os
import shutil
import subprocess

import pytest

from gdb_ftrace.core import kconfig, toolchain

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
ROOT = os.path.dirname(os.path.dirname(DATA))


def _config(name: str) -> str:
    with gzip.open(os.path.join(DATA, name), "rt") as f:
        return f.read()


def _without(text: str, *opts: str) -> str:
    lines = [l for l in text.splitlines() if not any(l.startswith(o + "=") for o in opts)]
    return "\n".join(lines + [f"# {o} is not set" for o in opts]) + "\n"


def test_every_scenario_has_its_needs():
    have = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "vm-images", "scenarios")) if f.endswith(".sh"))
    assert have == sorted(kconfig.SCENARIOS)


def test_debian_6_12_config_runs_everything():
    f = kconfig.check(_config("config-6.12.118+deb12-cloud-amd64.gz"))
    assert (f.fatal, f.refused, f.notes) == ([], {}, [])


def test_v5_4_config_has_no_direct_calls():
    # DYNAMIC_FTRACE_WITH_DIRECT_CALLS came in v5.5: the one scenario 5.4 refuses.
    f = kconfig.check(_config("config-5.4.286-src.gz"))
    assert f.fatal == [] and list(f.refused) == ["direct-call"]
    assert "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is not set" in f.refused["direct-call"]


def test_no_livepatch_refuses_the_livepatch_scenarios_only():
    text = _without(_config("config-5.4.286-src.gz"), "CONFIG_LIVEPATCH")
    f = kconfig.check(text)
    assert f.fatal == []
    assert sorted(f.refused) == sorted(kconfig.LIVEPATCH + ("direct-call",))
    for s in kconfig.LIVEPATCH:
        assert f.refused[s].startswith("CONFIG_LIVEPATCH is not set (the scenario loads a livepatch")
    assert kconfig.refusal(text, "ftrace-toggle") == "" and kconfig.refusal(text, "idle") == ""
    assert "livepatch" in kconfig.refusal(text, "livepatch-trace")


def test_no_serial_console_is_fatal_and_exits_1(tmp_path):
    text = _without(_config("config-6.12.118+deb12-cloud-amd64.gz"), "CONFIG_SERIAL_8250_CONSOLE")
    f = kconfig.check(text)
    assert f.fatal == ["CONFIG_SERIAL_8250_CONSOLE is not set (the guest reports on the serial console ttyS0)"]
    assert kconfig.refusal(text, "idle") == f.fatal[0]
    p = tmp_path / "config"
    p.write_text(text)
    assert kconfig.main([str(p)]) == 1


def test_a_module_is_not_enough_for_a_console_and_forced_signatures_refuse_our_modules():
    text = _config("config-6.12.118+deb12-cloud-amd64.gz").replace("CONFIG_SERIAL_8250=y", "CONFIG_SERIAL_8250=m")
    text += "CONFIG_MODULE_SIG_FORCE=y\n"
    f = kconfig.check(text)
    assert f.fatal == ["CONFIG_SERIAL_8250 is =m (needs =y) (the guest reports on the serial console ttyS0)"]
    assert sorted(f.refused) == sorted(kconfig.MODULES)
    assert all("CONFIG_MODULE_SIG_FORCE=y" in w for w in f.refused.values())


def test_no_dwarf_and_one_cpu_are_notes():
    text = _without(_config("config-5.4.286-src.gz"), "CONFIG_DEBUG_INFO", "CONFIG_DEBUG_INFO_DWARF4", "CONFIG_SMP")
    notes = kconfig.check(text).notes
    assert [n.split(" ")[0] for n in notes] == ["CONFIG_DEBUG_INFO", "CONFIG_SMP"]


# ---- the toolchain errors, from the real tools where this machine has them ----------

def _compile(tmp_path, files: dict[str, str], *args: str) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    p = subprocess.run(["gcc", *args, *files], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    assert p.returncode != 0
    return p.stderr


# tools/lib/subcmd/subcmd-util.h before 52a9dab6d892 (as in 4.14 and 4.19 before .231)
OLD_XREALLOC = """#include <stdlib.h>
void die(const char *m);
static inline void *xrealloc(void *ptr, size_t size)
{
	void *ret = realloc(ptr, size);
	if (!ret && !size)
		ret = realloc(ptr, 1);
	if (!ret) {
		ret = realloc(ptr, size);
		if (!ret && !size)
			ret = realloc(ptr, 1);
		if (!ret)
			die("Out of memory, realloc failed");
	}
	return ret;
}
void add_cmdname(void **p, size_t n) { *p = xrealloc(*p, n); }
"""


def test_gcc_12_use_after_free_in_old_libsubcmd(tmp_path):
    err = _compile(tmp_path, {"help.c": OLD_XREALLOC}, "-O2", "-Wall", "-Werror", "-c")
    if "use-after-free" not in err:
        pytest.skip("this gcc has no -Wuse-after-free (gcc < 12)")
    [p] = toolchain.explain(err)
    assert p.startswith("known toolchain error (use-after-free): ")
    assert "52a9dab6d892" in p and "KMAKE='WERROR=0'" in p and "gcc-11" in p


def test_gcc_10_no_common_force_order_and_yylloc(tmp_path):
    both = {"kaslr_64.c": "unsigned long __force_order;\nint yylloc;\nint f(void) { return 0; }\n",
            "pgtable_64.c": "unsigned long __force_order;\nint yylloc;\nint main(void) { return 0; }\n"}
    err = _compile(tmp_path, both, "-fno-common")
    found = toolchain.explain(err)
    assert [p.split(")")[0] for p in found] == ["known toolchain error (__force_order", "known toolchain error (yylloc"]
    assert "df6d4f9db79c" in found[0] and "HOSTCFLAGS=-fcommon" in found[1]


# Texts as the build printed them, from the mailing-list reports cited in docs/own-kernel-research.md
# (this machine has no objtool old enough to print them).
OBJTOOL = {
    "missing-symbol-table": "  AS      arch/x86/entry/thunk_64.o\narch/x86/entry/thunk_64.o: warning: objtool: "
                            "missing symbol table\nmake[2]: *** [scripts/Makefile.build:360: arch/x86/entry/thunk_64.o] Error 1\n",
    "missing-symbol-for-insn": "arch/x86/entry/thunk_64.o: warning: objtool: missing symbol for insn at offset 0x3e\n"
                               "make[2]: *** [scripts/Makefile.build:360: arch/x86/entry/thunk_64.o] Error 255\n",
    "start_secondary": "[    0.3] Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: "
                       "start_secondary+0x191/0x1a0\n",
}


@pytest.mark.parametrize("name", sorted(OBJTOOL))
def test_objtool_and_boot_texts(name):
    [p] = toolchain.explain(OBJTOOL[name])
    assert p.startswith(f"known toolchain error ({name}): ")


def test_an_unknown_error_is_not_explained(tmp_path):
    log = tmp_path / "build.log"
    log.write_text("drivers/foo.c:1:1: error: expected ';' before '}' token\n")
    assert toolchain.explain(log.read_text()) == [] and toolchain.main([str(log)]) == 1


def test_the_seed_era_tarball_is_the_newest_v54_beside_the_checkout(tmp_path):
    from gdb_ftrace.core.shared import seed_era_tarball

    root, kernels = tmp_path / "main", tmp_path / "shared" / "kernels"
    root.mkdir()
    assert seed_era_tarball(str(root)) is None
    kernels.mkdir(parents=True)
    for name in ("linux-5.4.99.tar.xz", "linux-5.4.286.tar.xz", "linux-6.1.1.tar.xz"):
        (kernels / name).write_bytes(b"")
    assert seed_era_tarball(str(root)) == str(kernels / "linux-5.4.286.tar.xz")
