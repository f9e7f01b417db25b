"""Exceptions that mean "the input is bad", as opposed to a bug.

The command line turns an :class:`InputError` into a one-line message and exit code 2; anything else
is an unexpected failure (exit code 1).
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """The user's input (a file, an array, an option) cannot be used; the message says why.

    It subclasses :class:`ValueError` so library callers can catch either.
    """
