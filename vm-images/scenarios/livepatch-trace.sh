# Scenario livepatch-trace: the seed's case.
#
# On CPU1 read /proc/cmdline in a loop (from before the livepatch loads, so
# that its batch has a reader too: HOLD), load the livepatch of
# cmdline_proc_show, wait for its transition, then count reads that are not
# the patched text. On CPU0 restrict the function tracer to cmdline_proc_show and toggle
# current_tracer function/nop $TOGGLES times, so ftrace re-patches the
# livepatched call site (livepatch trampoline <-> ftrace_caller) while CPU1
# keeps running into it.
# check: hold_sites=cmdline_proc_show
MARKER=gdb_ftrace-livepatched-cmdline
LP=gdb_ftrace_lp

load_livepatch() {
	taskset -p 1 $$ >/dev/null || return 1
	read -r before </proc/cmdline
	[ "$before" != "$MARKER" ] || { say "ERROR marker seen before the livepatch was loaded"; return 1; }

	insmod /lib/$LP.ko || { say "ERROR insmod $LP.ko failed"; return 1; }
	i=0
	while [ "$(cat /sys/kernel/livepatch/$LP/transition)" != 0 ]; do
		i=$((i + 1))
		[ $i -lt 600 ] || { say "ERROR livepatch transition did not finish in 60s"; return 1; }
		sleep 0.1
	done
	read -r after </proc/cmdline
	[ "$after" = "$MARKER" ] || { say "ERROR livepatch loaded but /proc/cmdline reads '$after'"; return 1; }
	say "LIVEPATCH enabled=$(cat /sys/kernel/livepatch/$LP/enabled) transition=done"
	touch /tmp/count
}

start_reader() {
	taskset 2 sh /helpers/cmdline-reader.sh "$MARKER" &
	rpid=$!
	while [ ! -e /tmp/reader.up ]; do sleep 0.1; done
}

toggle_tracer() {
	t=0
	while [ $t -lt "$TOGGLES" ]; do
		echo function >$TRACING/current_tracer || return 1
		echo nop >$TRACING/current_tracer || return 1
		t=$((t + 1))
		say "TOGGLE $t/$TOGGLES"
	done
}

stop_reader() {
	touch /tmp/stop
	wait $rpid
	read -r reads unpatched </tmp/reader.out
	say "RESULT scenario=$1 toggles=$TOGGLES reads=$reads unpatched=$unpatched"
}

run_scenario() {
	start_reader || return 1
	load_livepatch || return 1
	echo cmdline_proc_show >$TRACING/set_ftrace_filter || return 1
	toggle_tracer || return 1
	echo >$TRACING/set_ftrace_filter
	stop_reader "livepatch-trace"
}
