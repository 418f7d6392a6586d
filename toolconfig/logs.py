"""One way to log, for every tool: readable lines on a terminal, one JSON object per line otherwise.

Under cron or systemd nobody reads stderr live: each line is then a JSON object with ``time``,
``level`` and ``message`` (plus any ``extra`` fields a caller adds, such as a summary's counts),
which a log shipper or ``jq`` reads. On a terminal a person gets ``HH:MM:SS level: message``.
``--log-file`` adds the JSON lines to a file (reopened if logrotate moves it). No tool logs a
secret; messages are written to be read by the person who has to act on them.

A record logged with ``extra={"printed": True}`` (a summary the command also prints on stdout) is
not repeated on the terminal, only in JSON and in the log file.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["JsonFormatter", "HumanFormatter", "setup_logging", "log_levels"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "printed"}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "message", …extra}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="seconds"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class HumanFormatter(logging.Formatter):
    """``HH:MM:SS message`` for information, ``HH:MM:SS warning: message`` otherwise."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        text = f"{when} {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _not_printed(record: logging.LogRecord) -> bool:
    return not getattr(record, "printed", False)


def log_levels(*, verbose: bool = False, quiet: bool = False) -> int:
    """DEBUG with --verbose, WARNING with --quiet, else INFO."""
    return logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO


def setup_logging(
    name: str, *, verbose: bool = False, quiet: bool = False, log_file: str | None = None,
    stream: TextIO | None = None,
) -> logging.Logger:
    """Configure the logger *name* (a tool's top package) once per process; returns it."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setLevel(log_levels(verbose=verbose, quiet=quiet))  # --quiet quiets stderr, not the log file
    if stream.isatty():
        handler.setFormatter(HumanFormatter())
        handler.addFilter(_not_printed)
    else:
        handler.setFormatter(JsonFormatter())
    handlers: list[logging.Handler] = [handler]
    if log_file:
        file_handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(JsonFormatter())
        handlers.append(file_handler)
    logger = logging.getLogger(name)
    for old in logger.handlers:
        old.close()
    logger.handlers[:] = handlers
    logger.setLevel(log_levels(verbose=verbose))
    logger.propagate = False
    return logger
