"""Decode an HTTP/1.1 response body fed in pieces, and split NDJSON out of it as whole lines."""

from __future__ import annotations


class ChunkedLines:
    """Decode a body (chunked, Content-Length, or until close) fed as it arrives.

    Pure logic, no I/O: `feed()` takes what one recv returned and gives back every line it
    completes, so lines that arrive together leave together and none waits for the next read.
    """

    __slots__ = ("chunked", "finished", "remaining", "_raw", "_chunk_left", "_partial")

    def __init__(self, chunked: bool, length: int | None = None):
        self.chunked = chunked
        self.finished = False
        self.remaining = length  # Content-Length still due, when not chunked
        self._raw = b""          # undecoded chunked framing
        self._chunk_left = 0     # payload bytes due in this chunk; -1: its CRLF; -2: the trailer
        self._partial = b""      # payload after the last newline

    def feed(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the non-blank lines (without their newline) it completes."""
        payload = self.payload(data)
        if not payload:
            return []
        buffer = self._partial + payload if self._partial else payload
        lines = buffer.split(b"\n")
        self._partial = lines.pop()
        return [line for line in lines if line.strip()]

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
        return self._partial

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
                size = int(raw[pos:eol].split(b";", 1)[0], 16)
                if size < 0:
                    raise ValueError("negative chunk size")
                pos = eol + 2
                self._chunk_left = size if size else -2
        self._raw = raw[pos:] if pos < end else b""
        return b"".join(out) if len(out) != 1 else out[0]
