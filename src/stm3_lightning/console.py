"""What a run prints: every log record once, without Lightning's advertisements or known deprecation noise.

- One handler (on the root logger, stderr) formats every record. The ``lightning`` package installs its own
  console handler at import while letting its records propagate to the root as well, which printed each of its
  INFO lines twice; :func:`configure_console` removes that handler.
- Lightning's "💡 Tip" lines (litlogger, litmodels) are dropped, and so are the FutureWarnings the pinned stack
  emits on every fit and under DDP (``docs/ENVIRONMENT.md``, :data:`KNOWN_WARNINGS`).
"""

from __future__ import annotations

import logging
import sys
import warnings

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Log messages that advertise products, not anything about the run.
ADVERTISEMENTS: tuple[str, ...] = ("💡 Tip:",)
# Known deprecation warnings of torch 2.13 + lightning 2.6 that the user cannot act on (message regexes).
KNOWN_WARNINGS: tuple[str, ...] = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
)
# Loggers whose own handlers duplicate the root handler.
OWN_HANDLER_LOGGERS: tuple[str, ...] = ("lightning", "lightning.pytorch", "lightning.fabric")


class DropAdvertisements(logging.Filter):
    """Drops records whose message starts with one of :data:`ADVERTISEMENTS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(ADVERTISEMENTS)


def silence_known_warnings() -> None:
    """Ignore the :data:`KNOWN_WARNINGS` (any category); other warnings still show."""
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def configure_console(level: int = logging.INFO) -> None:
    """Set up logging for a command: one stderr handler for every record, no duplicates, no advertisements.

    Idempotent; an application (or pytest) that already configured the root logger keeps its handlers.
    """
    import lightning  # noqa: F401  (its import installs the handler removed below)

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    drop = DropAdvertisements()
    for handler in root.handlers:
        if not any(isinstance(f, DropAdvertisements) for f in handler.filters):
            handler.addFilter(drop)
    for name in OWN_HANDLER_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    silence_known_warnings()
