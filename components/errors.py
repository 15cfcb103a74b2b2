"""Errors that mean "the user's input or configuration is wrong", reported as one clear line."""


class InputError(ValueError):
    """Bad input data or configuration (not a bug): the CLI prints the message without a traceback."""
