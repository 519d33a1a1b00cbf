"""Log formatting: one JSON object per line on stderr, or plain text for humans."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from gateway.config import LogConfig


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...fields}`; fields come from `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR with a traceback quoting the raw request line.

    That is the client's fault, and the line may carry a session id or a token: keep one INFO line
    naming the parser's complaint only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
            record.msg, record.args = "malformed request from %s: %s", (peer, type(exc).__name__)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


_MALFORMED = MalformedRequestFilter()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")


def setup_logging(config: LogConfig) -> None:
    """Route the gateway's loggers to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("gateway", "gateway.access"):
        logging.getLogger(name).setLevel(config.level.upper())
    logging.getLogger("gateway.access").disabled = not config.access
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED)
