"""Read an audio upload (multipart/form-data) and write it out again for Ollama.

Two multipart parsers rarely agree on every odd body (a repeated field, a quoted boundary, a part
without a name), and the one that matters for a key's allow-list is Ollama's. So the gateway does
not forward the client's bytes: it parses the form (Werkzeug's parser), checks it, and sends a
form of its own making with only the fields Ollama reads, each once. What Ollama reads is then
exactly what the gateway checked.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from . import multipart

#: The text fields Ollama's transcription route reads (and `temperature`, which OpenAI defines); others are dropped.
TEXT_FIELDS = ("model", "language", "prompt", "response_format", "temperature")


@dataclass(frozen=True)
class AudioForm:
    """A checked upload: its model, and the body (and its Content-Type) to send Ollama."""

    model: str
    body: bytes
    content_type: str


def read_form(max_audio: int) -> AudioForm:
    """Read and check the request's form: one `model`, one non-empty `file` of at most `max_audio` bytes."""
    fields, upload = multipart.read_form(max_audio, "MAX_AUDIO_BYTES", TEXT_FIELDS, "audio file")
    model = fields.get("model", "").strip()
    if not model:
        raise multipart.bad("model is required")
    body, boundary = _encode(fields, upload.data, upload.filename.replace(" ", "_"), upload.media_type)
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
