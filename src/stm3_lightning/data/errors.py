"""Exceptions raised for dataset problems.

Every message is one sentence that says what is wrong and how to fix it, so the CLI can print it as is.
"""

from __future__ import annotations


class DataError(Exception):
    """Any problem with a dataset: missing, unreadable, malformed, failed checksum or failed download."""


class MissingDataError(DataError):
    """None of the files a dataset accepts is present (and it could not be downloaded)."""


class CorruptFileError(DataError):
    """A file exists but cannot be parsed: truncated, corrupt or not the format its name says."""


class ChecksumError(CorruptFileError):
    """A file's content differs from the published checksum."""


class FormatError(DataError):
    """A file parses but holds the wrong thing: missing key, wrong rank, wrong node count, bad channel."""


class DownloadError(DataError):
    """A download failed (no network, refused connection, timeout, HTTP error or short read).

    ``url`` and ``reason`` (a few words, e.g. ``connection refused``) let callers that try several mirrors
    summarise every failure in one message.
    """

    def __init__(self, message: str, *, url: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class DataWarning(UserWarning):
    """Something about a dataset is unusual but loading can go on (e.g. an unexpected number of steps)."""
