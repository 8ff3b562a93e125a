# Read /proc/cmdline in a loop until /tmp/stop exists; once /tmp/count exists
# (the livepatch is in) count the reads and the reads that are not the
# livepatch marker ($1). Only shell builtins in the loop
# (no fork per read), so the reader hits the patched site as often as it can.
MARKER=$1
n=0
bad=0
touch /tmp/reader.up
while [ ! -e /tmp/stop ]; do
	read -r line </proc/cmdline
	[ -e /tmp/count ] || continue
	n=$((n + 1))
	[ "$line" = "$MARKER" ] || bad=$((bad + 1))
done
echo "$n $bad" >/tmp/reader.out
