"""Pure logic of gdb_ftrace: no `import gdb` anywhere below this package."""
