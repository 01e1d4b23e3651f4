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


def first_sentence(err: BaseException) -> str:
    """The first sentence of a library exception's message, for a one-line error (torch's
    messages can run to a paragraph)."""
    text = (str(err).strip().splitlines() or [""])[0]
    return text.split(". ")[0].rstrip(".") or type(err).__name__
