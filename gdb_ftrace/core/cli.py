"""What the command lines (the driver, the gdb commands) share."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """'(default: X)' after an option's help where there is a default worth saying
    (not None, False or empty) and the help does not already speak of it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if action.default not in (None, False, "", argparse.SUPPRESS) and "default" not in h:
            h += " (default: %(default)s)"
        return h
