"""Structured, quiet logging: one logfmt line per event worth telling, none per message at INFO."""

from __future__ import annotations

import logging
import sys
import time

NOISY_LIBRARIES = ("faststream", "aio_pika", "aiormq", "faststream.access")


class LogfmtFormatter(logging.Formatter):
    """``time=... level=... logger=... msg="..."``: greppable by humans, parseable by log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        message = record.getMessage().replace('"', '\\"')
        line = f'time={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} ' \
               f'logger={record.name} msg="{message}"'
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
