"""Read an upload (multipart/form-data) whole, within limits, into its text fields and one file.

Werkzeug's parser does the parsing; this module sets its bounds (the body's size before a byte is
read, the number of parts, the size of the text fields) and refuses what two parsers could read
two ways: a field sent twice, a file part sent twice.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from ..errors import ApiError
from .request_body import read_body

#: Room for the multipart framing and the text fields, beyond the file itself.
FORM_BYTES = 1 << 20
MAX_PARTS = 32
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")


@dataclass(frozen=True)
class Upload:
    """The form's file: its name reduced to safe characters, its declared media type, its bytes."""

    filename: str
    media_type: str
    data: bytes


def read_form(max_file: int, limit_name: str, text_fields: tuple, what: str,
              file_field: str = "file") -> tuple[dict, Upload]:
    """The request's form: the `text_fields` it sent (each at most once) and its one non-empty file.

    The body may be `max_file` bytes plus FORM_BYTES: past that it is 413 from Content-Length, before
    it is read. `limit_name` is the setting of `max_file`, `what` names the file in errors ("audio file").
    """
    request.max_content_length = max_file + FORM_BYTES
    raw = read_body()
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    if mimetype != "multipart/form-data" or not options.get("boundary"):
        raise bad(f"The body must be multipart/form-data with a boundary (the {what} in `{file_field}`)")
    parser = FormDataParser(stream_factory=_in_memory, max_form_memory_size=FORM_BYTES, silent=False,
                            max_form_parts=MAX_PARTS)
    try:
        _, form, files = parser.parse(io.BytesIO(raw), mimetype, len(raw), options)
    except RequestEntityTooLarge:
        raise bad(f"The form's text fields exceed {FORM_BYTES} bytes, or it has over {MAX_PARTS} parts") from None
    except ValueError as exc:
        raise bad(f"The multipart body cannot be read: {exc}") from None
    fields = {}
    for name in text_fields:
        values = form.getlist(name)
        if len(values) > 1:
            raise bad(f"The field {name!r} is sent {len(values)} times; send it once")
        if values:
            fields[name] = values[0]
    uploads = files.getlist(file_field)
    if len(uploads) != 1:
        raise bad(f"{file_field} is required, once" if uploads else f"{file_field} is required")
    upload = uploads[0]
    data = upload.stream.read()
    if not data:
        raise bad(f"{what} is empty")
    if len(data) > max_file:
        raise ApiError(413, "Request Entity Too Large", f"The {what} is {len(data)} bytes; {limit_name} is {max_file}",
                       slug="request-entity-too-large")
    filename = _SAFE_NAME.sub("_", upload.filename or "")[-100:].strip("._ ") or "upload"
    media_type = upload.mimetype if _MEDIA_TYPE.fullmatch(upload.mimetype or "") else "application/octet-stream"
    return fields, Upload(filename, media_type, data)


def _in_memory(total_content_length, content_type, filename, content_length=None):
    """Keep uploaded files in memory: the body is there already, within its limit."""
    return io.BytesIO()


def bad(detail: str) -> ApiError:
    return ApiError(400, "Bad Request", detail, slug="bad-form")
