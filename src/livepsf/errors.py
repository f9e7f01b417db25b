"""Exceptions that mean "the input is bad", as opposed to a bug.

The command line turns an :class:`InputError` or a :class:`SetupError` into a one-line message and exit
code 2; anything else is an unexpected failure (exit code 1).
"""

from __future__ import annotations

__all__ = ["InputError", "SetupError"]


class InputError(ValueError):
    """The user's input (a file, an array, an option) cannot be used; the message says why.

    It subclasses :class:`ValueError` so library callers can catch either.
    """


class SetupError(RuntimeError):
    """This machine's set-up cannot run the request (a missing system library, a defective Qt binding).

    The message names what to install; nothing the user gave is wrong.
    """
