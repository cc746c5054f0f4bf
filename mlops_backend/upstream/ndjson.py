"""Decode an HTTP/1.1 response body fed in pieces, and split NDJSON out of it as whole lines."""

from __future__ import annotations

import re

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: The longest line (and whole answer) accepted from Ollama unless the config says otherwise.
DEFAULT_MAX_LINE = 16 * 1024 * 1024


class LineTooLong(ValueError):
    """Ollama sent a line (or a whole answer) longer than MAX_UPSTREAM_LINE_BYTES."""

    def __init__(self, limit: int):
        super().__init__(f"Ollama sent a line longer than MAX_UPSTREAM_LINE_BYTES ({limit} bytes)")
        self.limit = limit


class Lines:
    """Split bytes fed in pieces into lines, in time linear in the bytes, refusing lines over `limit`.

    A line that spans many reads (a multi-megabyte /api/show or logprobs line) is kept as a list of
    pieces and joined once, when its newline arrives: joining the buffer on every read would cost
    time quadratic in the line's length, on the worker's only core.
    """

    __slots__ = ("limit", "_pieces", "_size")

    def __init__(self, limit: int = DEFAULT_MAX_LINE):
        self.limit = limit
        self._pieces: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the non-blank lines (without their newline) it completes."""
        if self._pieces:
            if b"\n" not in data:
                self._keep(data)
                return []
            self._pieces.append(data)
            data = b"".join(self._pieces)
            self._pieces, self._size = [], 0
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            self._keep(tail)
        if len(data) > self.limit and any(len(line) > self.limit for line in lines):
            raise LineTooLong(self.limit)
        return [line for line in lines if line.strip()]

    def leftover(self) -> bytes:
        """Return what came after the last newline: a last line the upstream did not terminate."""
        return b"".join(self._pieces)

    @property
    def inside_line(self) -> bool:
        """True while part of a line has come and its newline has not."""
        return bool(self._pieces)

    def _keep(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size > self.limit:
            raise LineTooLong(self.limit)


class ChunkedLines:
    """Decode a body (chunked, Content-Length, or until close) fed as it arrives.

    Pure logic, no I/O: `feed()` takes what one recv returned and gives back every line it
    completes, so lines that arrive together leave together and none waits for the next read.
    """

    __slots__ = ("chunked", "finished", "remaining", "_raw", "_chunk_left", "_lines")

    def __init__(self, chunked: bool, length: int | None = None, max_line: int = DEFAULT_MAX_LINE):
        self.chunked = chunked
        self.finished = False
        self.remaining = length  # Content-Length still due, when not chunked
        self._raw = b""          # undecoded chunked framing
        self._chunk_left = 0     # payload bytes due in this chunk; -1: its CRLF; -2: the trailer
        self._lines = Lines(max_line)

    def feed(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the non-blank lines (without their newline) it completes."""
        payload = self.payload(data)
        return self._lines.feed(payload) if payload else []

    def payload(self, data: bytes) -> bytes:
        """Consume `data`; return the body bytes it carries, framing removed."""
        if self.chunked:
            return self._dechunk(data)
        if self.remaining is not None:
            data = data[: self.remaining]
            self.remaining -= len(data)
            self.finished = self.remaining == 0
        return data

    def leftover(self) -> bytes:
        """Return payload after the last newline: a last line the upstream did not terminate."""
        return self._lines.leftover()

    @property
    def spare(self) -> bytes:
        """Bytes received past the end of the body (none, from a well-behaved server)."""
        return self._raw

    def _dechunk(self, data):
        raw = self._raw + data if self._raw else data
        out = []
        pos, end = 0, len(raw)
        while pos < end and not self.finished:
            if self._chunk_left > 0:
                take = min(self._chunk_left, end - pos)
                out.append(raw[pos:pos + take])
                pos += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk_left = -1
            elif self._chunk_left == -1:  # the CRLF closing a chunk's payload
                if end - pos < 2:
                    break
                if raw[pos:pos + 2] != b"\r\n":
                    raise ValueError("chunk payload not followed by CRLF")
                pos += 2
                self._chunk_left = 0
            elif self._chunk_left == -2:  # after the last chunk: optional trailers, then CRLF
                if raw.startswith(b"\r\n", pos):
                    pos += 2
                else:
                    eot = raw.find(b"\r\n\r\n", pos)
                    if eot < 0:
                        break
                    pos = eot + 4
                self.finished = True
            else:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > 1024:
                        raise ValueError("chunk size line too long")
                    break
                digits = raw[pos:eol].split(b";", 1)[0].rstrip(b" \t")
                if not _HEX.fullmatch(digits):
                    raise ValueError("chunk size is not hexadecimal digits")
                size = int(digits, 16)
                pos = eol + 2
                self._chunk_left = size if size else -2
        self._raw = raw[pos:] if pos < end else b""
        return b"".join(out) if len(out) != 1 else out[0]
