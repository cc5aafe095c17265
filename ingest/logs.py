"""Logging set-up: plain or JSON lines on stderr, with secrets scrubbed from every record."""

from __future__ import annotations

import json
import logging
import sys
import time

from .masking import Masker


class _SecretFilter(logging.Filter):
    def __init__(self, mask: Masker):
        super().__init__()
        self.mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        if self.mask.secrets:
            record.msg, record.args = self.mask(record.getMessage()), None
            if record.exc_info:
                # A traceback can quote a connection string or a server's answer.
                record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)


def configure(fmt: str = "plain", level: str = "info", mask: Masker | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SecretFilter(mask or Masker()))
    handler.setFormatter(_JSONFormatter() if fmt == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Their retries and reconnects are reported by our own state-change messages.
    for noisy in ("urllib3", "urllib3.connectionpool", "clickhouse_connect", "httpx2"):
        logging.getLogger(noisy).setLevel("DEBUG" if level == "debug" else "ERROR")


class RateLimitedLog:
    """Logs at most one message per interval for a noisy condition, with a count of the rest."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0):
        self.logger = logger
        self.interval_s = interval_s
        self._last = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar messages suppressed)"
        self._last, self._suppressed = now, 0
        self.logger.warning(message, *args)
