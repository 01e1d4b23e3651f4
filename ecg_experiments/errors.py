"""Errors that the user can fix (bad input, bad config), reported without a traceback."""


class EcgUserError(Exception):
    """A problem with the user's input or configuration.

    The message must name the file, row or option at fault and say what was expected.
    Command-line entry points print it and exit with status 2.
    """


class DataError(EcgUserError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(EcgUserError):
    """A configuration option is missing, invalid or inconsistent with another."""
