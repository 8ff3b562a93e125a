# Scenario ftrace-toggle: the default scenario without the livepatch, for a
# kernel built without CONFIG_LIVEPATCH (or a developer who wants ftrace only).
#
# On CPU1 read /proc/cmdline in a loop; on CPU0 restrict the function tracer
# to cmdline_proc_show and toggle current_tracer function/nop $TOGGLES
# times, so ftrace patches that call site NOP <-> CALL ftrace_caller (or the
# tracer's trampoline) while CPU1 keeps running into it. Nothing replaces
# the function: a read that does not give /proc/cmdline's text is corruption
# (unpatched=).
# check: hold_sites=cmdline_proc_show
. /scenarios/livepatch-trace.sh
run_scenario() {
	taskset -p 1 $$ >/dev/null || return 1
	grep -qw cmdline_proc_show $TRACING/available_filter_functions ||
		{ say "ERROR cmdline_proc_show is not traceable"; return 1; }
	read -r text </proc/cmdline
	touch /tmp/count  # no livepatch to wait for: every read counts
	taskset 2 sh /helpers/cmdline-reader.sh "$text" &
	rpid=$!
	while [ ! -e /tmp/reader.up ]; do sleep 0.1; done
	echo cmdline_proc_show >$TRACING/set_ftrace_filter || return 1
	toggle_tracer || return 1
	echo >$TRACING/set_ftrace_filter
	stop_reader "ftrace-toggle"
}
