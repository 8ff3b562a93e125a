# Read /proc/cmdline in a loop until /tmp/stop exists; once /tmp/count exists
# (the livepatch is in) count the reads and the reads that are not the
# livepatch marker ($1). Before /tmp/count, once the marker shows (the
# livepatch's ftrace batch is done and this task has switched) read only
# every 0.1 s: on 6.12 the transition then patches every cond_resched
# static call site one text_poke at a time, three IPI syncs each, and with
# this vCPU spinning under single-threaded TCG each sync waits for a
# round-robin slice: insmod took 60 s instead of 0.1 s. Only shell builtins in the loop
# (no fork per read), so the reader hits the patched site as often as it can.
MARKER=$1
n=0
bad=0
touch /tmp/reader.up
while [ ! -e /tmp/stop ]; do
	read -r line </proc/cmdline
	if [ ! -e /tmp/count ]; then
		[ "$line" != "$MARKER" ] || sleep 0.1
		continue
	fi
	n=$((n + 1))
	[ "$line" = "$MARKER" ] || bad=$((bad + 1))
done
echo "$n $bad" >/tmp/reader.out
