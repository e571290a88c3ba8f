"""Errors medae expects and reports as one line: ``<file>: <reason>``."""

from __future__ import annotations

import os


class MedaeError(Exception):
    """An expected failure (bad input, bad configuration) with a one-line message.

    ``MedaeError(path, reason)`` renders as ``"<name of path>: <reason>"``; ``MedaeError(message)``
    keeps the message.  Newlines are folded so the message is always one line.
    """

    def __init__(self, path_or_message: str | os.PathLike, reason: str | None = None):
        if reason is None:
            message = str(path_or_message)
            self.path = None
        else:
            self.path = os.fspath(path_or_message)
            message = f"{_display(self.path)}: {reason}"
        self.reason = reason
        super().__init__(" ".join(message.split()))


def failure_reason(path: str | os.PathLike, exc: BaseException) -> str:
    """One line for a scan that failed with ``exc``.  An unexpected exception's message is left
    out (it may quote file contents such as DICOM text): only its type is named."""
    if isinstance(exc, MedaeError):
        return str(exc)
    return str(MedaeError(path, f"unexpected {type(exc).__name__} while reading or scoring "
                                "(a bug or an unsupported file; message withheld)"))


class ScanReadError(MedaeError):
    """A scan could not be read or has unusable contents or geometry."""


class SeriesSelectionError(MedaeError):
    """A folder holds several (or no) series where exactly one was expected."""


def _display(path: str) -> str:
    """File name shown in messages: the path as given, with non-printable characters escaped."""
    return path.encode("unicode_escape", "backslashreplace").decode("ascii", "replace")
