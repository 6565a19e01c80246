"""Errors the user can fix (bad input, an output that already exists), as opposed to bugs.

The CLI prints a UserError as `gvu: error: <message>` and exits with status 2, with no traceback; any other
exception is a bug and keeps its traceback. So a UserError's message must say what is wrong, where (file and
line), and how to fix it.
"""


class UserError(Exception):
    """A problem with the user's input or options; the message is shown as is."""


class SetupError(UserError, ValueError):
    """A ValueError met while a command checks its input and sets up, before its real work: the user's to fix.
    (A ValueError raised later is a bug, and the CLI keeps its traceback.)"""
