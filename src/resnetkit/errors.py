"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input from a user (a name, a path, a value). The message says what is wrong and how to fix it."""
