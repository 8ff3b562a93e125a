# shellcheck shell=bash
# Sourced by vm-images/build-vm (used by lib/apt.sh) and tests/unit/test_shell_pipes.py: helpers on .deb files.
# Callers run under `set -euo pipefail`, so a reader that stops early (grep -m1,
# head, grep -q) would make the writer die of SIGPIPE and fail the pipeline:
# every reader here consumes its whole input.

# deb_member DEB REGEX: the first path in DEB matching REGEX (extended); fails when none does.
# The regex goes through ENVIRON, not awk -v, so "\." stays a literal dot.
deb_member() {
	dpkg-deb -c "$1" | DEB_RE="$2" awk '!found && $6 ~ ENVIRON["DEB_RE"] { print $6; found = 1 } END { exit !found }'
}

# field_of FIELD: the first "FIELD: value" of apt-cache show / dpkg output on stdin.
field_of() { F="$1" awk 'index($0, ENVIRON["F"] ": ") == 1 && !done { print substr($0, length(ENVIRON["F"]) + 3); done = 1 }'; }
