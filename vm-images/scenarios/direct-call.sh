# Scenario direct-call: an ftrace direct call (what a BPF fentry trampoline
# is) going on and off while a CPU runs through its call site.
#
# /lib/gdb_ftrace_direct.ko registers a direct call on vfs_read (its own
# trampoline in module text, no ftrace_caller in between) and unregisters it
# when removed. On CPU1 read /proc/cmdline in a loop (every read is a
# vfs_read). On CPU0 insmod/rmmod the module $TOGGLES times: each load
# patches vfs_read's fentry site NOP -> CALL gdb_ftrace_direct_tramp, each
# removal CALL -> NOP, both through the int3 path, so CPU1 runs into the int3
# and the handler must emulate the CALL into the module's trampoline.
#
# The result: reads = the reader's reads; unpatched = reads that did not give
# /proc/cmdline's text (nothing here replaces it: any is corruption);
# direct_calls = calls of the trampoline, summed over the loads (each load
# must see at least its own read of the counter, else the scenario fails).
DIRECT=gdb_ftrace_direct

start_cmdline_reader() {
	taskset -p 1 $$ >/dev/null || return 1
	read -r text </proc/cmdline
	touch /tmp/count  # the reader counts every read here (no livepatch to wait for)
	taskset 2 sh /helpers/cmdline-reader.sh "$text" &
	rpid=$!
	while [ ! -e /tmp/reader.up ]; do sleep 0.1; done
}

toggle_direct() {
	t=0
	total=0
	while [ $t -lt "$TOGGLES" ]; do
		insmod /lib/$DIRECT.ko || { say "ERROR insmod $DIRECT.ko failed"; return 1; }
		read -r calls </sys/module/$DIRECT/parameters/calls || return 1
		rmmod $DIRECT || { say "ERROR rmmod $DIRECT failed"; return 1; }
		[ "$calls" -gt 0 ] || { say "ERROR the direct call on vfs_read never ran while $DIRECT was loaded"; return 1; }
		total=$((total + calls))
		t=$((t + 1))
		say "TOGGLE $t/$TOGGLES calls=$calls"
	done
}

run_scenario() {
	# build-vm leaves /lib/$DIRECT.unavailable (the reason) when the module does not
	# build for this kernel; fail (/init's) so that the reason is the last ERROR.
	[ -f /lib/$DIRECT.ko ] || fail "scenario direct-call is unavailable on this kernel: $(cat /lib/$DIRECT.unavailable 2>/dev/null || echo "/lib/$DIRECT.ko is missing")"
	grep -qw vfs_read $TRACING/available_filter_functions ||
		{ say "ERROR vfs_read is not traceable"; return 1; }
	start_cmdline_reader || return 1
	toggle_direct || { touch /tmp/stop; wait $rpid; return 1; }
	touch /tmp/stop
	wait $rpid
	read -r reads unpatched </tmp/reader.out
	say "RESULT scenario=direct-call toggles=$TOGGLES reads=$reads unpatched=$unpatched direct_calls=$total"
}
