# Scenario panic-mid-run: the guest dies while the checker is armed.
#
# The default scenario's first half (livepatch, reader, $TOGGLES tracer
# toggles), then a crash on purpose (sysrq-trigger c: a NULL write, then
# "Kernel panic"), as a kernel under test may do. With panic=-1 and QEMU's
# -no-reboot the VM ends at once. What the test asserts is the host side: the
# check ends in bounded time with FAIL, says the guest crashed, keeps the
# events seen before it, and leaves nothing running.
# check: toggles=5
. /scenarios/livepatch-trace.sh

run_scenario() {
	start_reader || return 1
	load_livepatch || return 1
	echo cmdline_proc_show >$TRACING/set_ftrace_filter || return 1
	toggle_tracer || return 1
	say "CRASHING on purpose (echo c > /proc/sysrq-trigger)"
	echo 1 >/proc/sys/kernel/sysrq
	echo c >/proc/sysrq-trigger
	sleep 5
	say "ERROR the guest survived sysrq-trigger c"
	return 1
}
