"""Give every request an id, carry it in logs and in the X-Request-ID response header."""

from __future__ import annotations

import logging
import re
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


class RequestIdFilter(logging.Filter):
    """Put the current request's id on every log record (`-` outside a request)."""

    def filter(self, record):
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def configure_logging(level: str) -> None:
    """Log to stderr with the request id, once per process."""
    root = logging.getLogger("mlops_backend")
    root.setLevel(level)
    if any(isinstance(f, RequestIdFilter) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    root.addHandler(handler)
    root.propagate = False
