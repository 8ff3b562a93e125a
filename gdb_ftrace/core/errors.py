"""Errors the core raises; the gdb layer turns UserError into gdb.GdbError."""


class UserError(Exception):
    """A mistake the user can fix (bad argument, missing symbol, unsupported kernel).

    The message must say what is wrong and what to do about it.
    """


class DecodeError(Exception):
    """Guest data that does not fit the layout we were given (a bug or a corrupt read)."""
