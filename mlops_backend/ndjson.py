"""Read an upstream NDJSON body straight from its socket, in large reads, as whole lines."""

from __future__ import annotations

import socket
import time


class ChunkedLines:
    """Decode an HTTP/1.1 body (chunked or not) fed in pieces into complete NDJSON lines.

    Pure logic, no I/O: `feed()` takes what one recv returned and gives back every line it
    completes, so lines that arrive together leave together and none waits for the next read.
    """

    __slots__ = ("chunked", "finished", "_raw", "_chunk_left", "_partial", "_remaining")

    def __init__(self, chunked: bool, length: int | None = None):
        self.chunked = chunked
        self.finished = False
        self._raw = b""          # undecoded chunked framing
        self._chunk_left = 0     # payload bytes due in this chunk; -1: its CRLF; -2: the trailer
        self._partial = b""      # payload after the last newline
        self._remaining = length  # Content-Length still due, when not chunked

    def feed(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the lines (without their newline) it completes."""
        payload = self._dechunk(data) if self.chunked else self._identity(data)
        if not payload:
            return []
        buffer = self._partial + payload if self._partial else payload
        lines = buffer.split(b"\n")
        self._partial = lines.pop()
        return [line for line in lines if line.strip()]

    def leftover(self) -> bytes:
        """Return payload after the last newline: a last line the upstream did not terminate."""
        return self._partial

    def _identity(self, data):
        if self._remaining is not None:
            data = data[: self._remaining]
            self._remaining -= len(data)
            self.finished = self._remaining == 0
        return data

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
                pos = eol + 2
                self._chunk_left = size if size else -2
        self._raw = raw[pos:] if pos < end else b""
        return b"".join(out) if len(out) != 1 else out[0]


class NDJSONStream:
    """An open upstream response whose body we read ourselves, bypassing http.client.

    http.client (under requests) cannot be interrupted safely mid-read, and `iter_lines` holds
    data back until `chunk_size` bytes arrive; reading the socket directly lets a read time out
    (for heartbeats) and returns every complete line as soon as its bytes land.
    """

    __slots__ = ("_response", "_sock", "_decoder", "_chunk_timeout", "_last_data", "_pending", "closed", "clean")

    READ_SIZE = 65536

    def __init__(self, response, chunk_timeout: float):
        raw = response.raw                      # urllib3.HTTPResponse
        fp = raw._fp                            # http.client.HTTPResponse, headers parsed, body untouched
        self._response = response
        self._sock = raw._connection.sock
        self._decoder = ChunkedLines(bool(fp.chunked), fp.length)
        self._chunk_timeout = chunk_timeout
        self._last_data = time.monotonic()
        self.closed = False
        self.clean = False
        # Bytes http.client already buffered past the headers belong to the body: take them
        # without blocking (a timeout of 0 makes the buffered reader return what it holds).
        self._sock.settimeout(0.0)
        try:
            self._pending = fp.fp.read1(self.READ_SIZE) if fp.fp is not None else b""
        finally:
            self._sock.settimeout(chunk_timeout)

    def read_lines(self, wait: float) -> list[bytes] | None:
        """Return the next complete lines; [] after `wait` seconds of silence; None at the end.

        Raises TimeoutError once the upstream has been silent longer than the chunk timeout,
        ConnectionError when the connection drops mid-body, ValueError on broken framing.
        """
        while True:
            if self._pending:
                data, self._pending = self._pending, b""
            else:
                if self._decoder.finished:
                    return None
                silent = time.monotonic() - self._last_data
                budget = self._chunk_timeout - silent
                if budget <= 0:
                    raise TimeoutError(f"Ollama sent nothing for {silent:.1f} s")
                self._sock.settimeout(min(wait, budget))
                try:
                    data = self._sock.recv(self.READ_SIZE)
                except socket.timeout:
                    if time.monotonic() - self._last_data >= self._chunk_timeout:
                        raise TimeoutError(f"Ollama sent nothing for {self._chunk_timeout:.1f} s") from None
                    return []
                if not data:
                    if self._decoder.chunked or self._decoder._remaining is not None:
                        raise ConnectionError("Ollama closed the connection mid-response")
                    self._decoder.finished = True
                    tail = self._decoder.leftover()
                    return [tail] if tail.strip() else None
                self._last_data = time.monotonic()
            lines = self._decoder.feed(data)
            if lines:
                return lines

    def _drain_nowait(self):
        """Read the end of the body if it is already here, so the connection can be reused."""
        self._sock.settimeout(0.0)
        try:
            while not self._decoder.finished:
                data = self._pending or self._sock.recv(self.READ_SIZE)
                self._pending = b""
                if not data:
                    return
                self._decoder.feed(data)
        except (OSError, ValueError):
            return

    def interrupt(self):
        """Shut the upstream socket down from anywhere (another greenlet, the hub) to stop Ollama."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        """Release the connection: back to the pool after a clean end, closed otherwise."""
        if self.closed:
            return
        self.closed = True
        response = self._response
        if self.clean and not self._decoder.finished:
            self._drain_nowait()
        if self._decoder.finished and not self._pending and not self._decoder._raw:
            # We consumed the body behind http.client's back; mark it done so urllib3 can reuse
            # the connection (http.client refuses a new request while the old response is open).
            response.raw._fp._close_conn()
            response._content_consumed = True
        else:
            self.interrupt()
        response.close()
