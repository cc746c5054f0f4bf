"""Give every request an id, carry it in logs and in the X-Request-ID response header; tell who the
client is behind a trusted proxy; keep every log line one line."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
import uuid

from flask import g, has_request_context, request

HEADER = "X-Request-ID"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def assign_request_id() -> None:
    """Keep a well-formed incoming X-Request-ID (from nginx, say), or make a new one."""
    incoming = request.headers.get(HEADER, "")
    g.request_id = incoming if _VALID.match(incoming) else uuid.uuid4().hex


def add_request_id_header(response):
    """Echo the request id; hooks only touch headers, never a streamed body."""
    request_id = g.get("request_id")
    if request_id:
        response.headers[HEADER] = request_id
    return response


def client_address(trusted: tuple) -> str:
    """The client's address: the peer's, or, when the peer is a proxy in `trusted` (FORWARDED_ALLOW_IPS),
    the last address of X-Forwarded-For: the one that proxy saw and appended (earlier ones are the
    client's own word)."""
    peer = request.remote_addr or "-"
    if "*" not in trusted and peer not in trusted:
        return peer
    hop = request.headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return peer


#: Characters that would break a text log line or let a value pose as another field.
_UNSAFE = re.compile(r"[^\x21-\x7e]|[\"=\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def quoted(value) -> str:
    """A value for a `name=value` text log line: as it is when plain, else a JSON string (escaped, quoted)."""
    text = str(value)
    return text if text and not _UNSAFE.search(text) else json.dumps(text)


def one_line(text: str) -> str:
    """Escape line breaks and other control characters, so no text can start a forged log line."""
    return _CONTROL.sub(lambda match: json.dumps(match.group())[1:-1], text) if _CONTROL.search(text) else text


class TextFormatter(logging.Formatter):
    """The text format, each record's message kept on one line (a traceback still follows it)."""

    def formatMessage(self, record):
        record.message = one_line(record.message)
        return super().formatMessage(record)


class RequestIdFilter(logging.Filter):
    """Put the request's id on every log record (`-` outside a request)."""

    def filter(self, record):
        fields = getattr(record, "fields", None)
        if fields and "request_id" in fields:
            record.request_id = fields["request_id"]  # a line written after the response closed
        else:
            record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message, and a record's `fields`."""

    def format(self, record):
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
                "pid": record.process, "request_id": record.request_id}
        fields = getattr(record, "fields", None)
        if fields:
            line["message"] = "request"
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


# The pid tells gunicorn's workers apart.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d [%(request_id)s] %(name)s: %(message)s"


#: Loggers whose lines go out in our format, with their least level.
LOGGERS = {"mlops_backend": logging.DEBUG}


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr with the request id, as text or JSON lines; once per process."""
    for name, least in LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(logging.getLevelName(level), least))
        if any(isinstance(f, RequestIdFilter) for h in logger.handlers for f in h.filters):
            continue
        handler = logging.StreamHandler()
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False
