"""Read an audio upload (multipart/form-data) and write it out again for Ollama.

Two multipart parsers rarely agree on every odd body (a repeated field, a quoted boundary, a part
without a name), and the one that matters for a key's allow-list is Ollama's. So the gateway does
not forward the client's bytes: it parses the form (Werkzeug's parser), checks it, and sends a
form of its own making with only the fields Ollama reads, each once. What Ollama reads is then
exactly what the gateway checked.
"""

from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from ..errors import ApiError
from .request_body import read_body

#: The text fields Ollama's transcription route reads (and `temperature`, which OpenAI defines); others are dropped.
TEXT_FIELDS = ("model", "language", "prompt", "response_format", "temperature")
#: Room for the multipart framing and the text fields, beyond the audio itself.
FORM_BYTES = 1 << 20
MAX_PARTS = 32
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")


@dataclass(frozen=True)
class AudioForm:
    """A checked upload: its model, and the body (and its Content-Type) to send Ollama."""

    model: str
    body: bytes
    content_type: str


def read_form(max_audio: int) -> AudioForm:
    """Read and check the request's form: one `model`, one non-empty `file` of at most `max_audio` bytes."""
    request.max_content_length = max_audio + FORM_BYTES
    raw = read_body()
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    if mimetype != "multipart/form-data" or not options.get("boundary"):
        raise _bad("The body must be multipart/form-data with a boundary (the audio in `file`, the model in "
                   "`model`)")
    parser = FormDataParser(stream_factory=_in_memory, max_form_memory_size=FORM_BYTES, silent=False,
                            max_form_parts=MAX_PARTS)
    try:
        _, form, files = parser.parse(io.BytesIO(raw), mimetype, len(raw), options)
    except RequestEntityTooLarge:
        raise _bad(f"The form's text fields exceed {FORM_BYTES} bytes, or it has over {MAX_PARTS} parts") from None
    except ValueError as exc:
        raise _bad(f"The multipart body cannot be read: {exc}") from None
    fields = {}
    for name in TEXT_FIELDS:
        values = form.getlist(name)
        if len(values) > 1:
            raise _bad(f"The field {name!r} is sent {len(values)} times; send it once")
        if values:
            fields[name] = values[0]
    model = fields.get("model", "").strip()
    if not model:
        raise _bad("model is required")
    uploads = files.getlist("file")
    if len(uploads) != 1:
        raise _bad("file is required, once" if uploads else "file is required")
    upload = uploads[0]
    audio = upload.stream.read()
    if not audio:
        raise _bad("audio file is empty")
    if len(audio) > max_audio:
        raise ApiError(413, "Request Entity Too Large", f"The audio file is {len(audio)} bytes; MAX_AUDIO_BYTES is "
                       f"{max_audio}", slug="request-entity-too-large")
    filename = _SAFE_NAME.sub("_", upload.filename or "")[-100:].strip("._") or "audio"
    media_type = upload.mimetype if _MEDIA_TYPE.fullmatch(upload.mimetype or "") else "application/octet-stream"
    body, boundary = _encode(fields, audio, filename, media_type)
    return AudioForm(model, body, f"multipart/form-data; boundary={boundary}")


def _encode(fields: dict, audio: bytes, filename: str, media_type: str) -> tuple[bytes, str]:
    """Our own multipart body: the text fields, then the file; a boundary that occurs in none of them."""
    values = [value.encode() for value in fields.values()]
    while True:
        boundary = "mlops-" + secrets.token_hex(16)
        mark = boundary.encode()
        if mark not in audio and not any(mark in value for value in values):
            break
    parts = [b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (mark, name.encode(), value)
             for name, value in zip(fields, values)]
    parts.append(b'--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\nContent-Type: %s\r\n\r\n'
                 % (mark, filename.encode(), media_type.encode()))
    return b"".join(parts) + audio + b"\r\n--%s--\r\n" % mark, boundary


def _in_memory(total_content_length, content_type, filename, content_length=None):
    """Keep uploaded files in memory: the body is there already, within its limit."""
    return io.BytesIO()


def _bad(detail: str) -> ApiError:
    return ApiError(400, "Bad Request", detail, slug="bad-form")
