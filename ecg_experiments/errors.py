"""Errors that the user can fix (bad input, bad config), reported without a traceback."""

from __future__ import annotations


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


def user_error_in(err: BaseException) -> EcgUserError | None:
    """The EcgUserError behind `err`, also when a library wrapped it (hydra.instantiate)."""
    seen = 0
    current: BaseException | None = err
    while current is not None and seen < 10:
        if isinstance(current, EcgUserError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None
