# Scenario trace-all: the function tracer on every traceable function.
#
# Load the livepatch of cmdline_proc_show, start the /proc/cmdline reader on
# CPU1, then toggle current_tracer function/nop $TOGGLES times with an empty
# set_ftrace_filter: every fentry site of the kernel (tens of thousands) is
# re-patched in batches, while CPU1 keeps calling traced functions. Jump
# labels flip too. Reads that are not the livepatch marker count as
# unpatched, as in livepatch-trace.
#
# Tens of thousands of int3s per toggle: one toggle, and the entry stop and
# landing for the first int3s of each batch only (the handler checks for all).
# check: toggles=1 sample=4 timeout=2400
. /scenarios/livepatch-trace.sh

run_scenario() {
	start_reader || return 1
	load_livepatch || return 1
	echo >$TRACING/set_ftrace_filter || return 1
	say "SITES $(wc -l <$TRACING/available_filter_functions) traceable functions"
	toggle_tracer || return 1
	stop_reader "trace-all"
}
