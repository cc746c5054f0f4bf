"""Split a body fed in pieces (as it arrives) into whole NDJSON lines: the one place lines are split."""

from __future__ import annotations

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
