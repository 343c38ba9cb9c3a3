"""Errors caused by the user's input: the CLI prints them on one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a value, a path, a file). The message names the value and the fix."""
