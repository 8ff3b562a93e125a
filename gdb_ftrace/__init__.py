"""gdb_ftrace: verify the int3 emulation of x86_64 live text patching.

The package is importable without gdb: everything under gdb_ftrace.core is
pure Python (bytes and ints in, dataclasses out). gdb_ftrace.gdb_layer is
the thin adapter that reads guest memory and registers the `ftrace-int3`
commands; import it only inside gdb.
"""

__version__ = "0.1.0"
