"""gdb adapter of gdb_ftrace: import only inside gdb. Registers `ftrace-int3`."""

from . import commands

commands.register()
