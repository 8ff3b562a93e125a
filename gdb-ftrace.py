# Load the gdb_ftrace extension into gdb:  (gdb) source /path/to/gdb-ftrace.py
# Registers the `ftrace-int3` command family; see `help ftrace-int3`.
import os
import sys

_here = os.path.dirname(os.path.abspath(os.path.expanduser(__file__)))
if _here not in sys.path:
    sys.path.insert(0, _here)

try:
    import gdb_ftrace.gdb_layer  # noqa: F401,E402
except ImportError as _e:
    raise gdb.GdbError(  # noqa: F821 - gdb is the embedding module
        f"gdb_ftrace: {_e}. gdb's Python is {sys.executable or 'embedded'} "
        f"{sys.version.split()[0]}; install python3-tabulate and python3-pygments "
        "(or run 'make setup' in the gdb_ftrace checkout)")
