"""Errors the user can fix (bad input, an output that already exists), as opposed to bugs.

The CLI prints a UserError as `gvu: error: <message>` and exits with status 2, with no traceback; any other
exception is a bug and keeps its traceback. So a UserError's message must say what is wrong, where (file and
line), and how to fix it.
"""


class UserError(Exception):
    """A problem with the user's input or options; the message is shown as is."""
