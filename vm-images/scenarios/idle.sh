# Scenario idle: a guest that patches no text, for what an armed checker costs
# while nothing happens (make bench's idle ratio).
#
# No livepatch, no tracer: on CPU1 read /proc/cmdline $TOGGLES x 1000 times (a
# fixed amount of work, so the wall time says how much slower the guest ran);
# CPU0 only takes its timer interrupts. Every interrupt return goes through
# the int3 entry's page (native_irq_return_iret), as in the other scenarios.
# check: toggles=20
run_scenario() {
	taskset -p 2 $$ >/dev/null || return 1
	n=0
	end=$((TOGGLES * 1000))
	while [ $n -lt $end ]; do
		read -r line </proc/cmdline
		n=$((n + 1))
	done
	say "RESULT scenario=idle toggles=$TOGGLES reads=$n unpatched=0"
}
