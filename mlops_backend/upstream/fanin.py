"""One NDJSON stream made of several upstreams' streams (a pull on every upstream at once).

Each line is passed on as it arrives with the name of the upstream it came from (`"upstream"`);
an upstream's own `{"status": "success"}` keeps its name, and one `{"status": "success"}` without
a name closes the stream once every upstream succeeded. A failure of one (an error status, an
`{"error"}` line, a dropped connection) arrives as an `{"error", "upstream"}` line.
"""

from __future__ import annotations

import json
import queue
import threading

from .client import OllamaError
from .ndjson import Lines

_DONE = object()


class FanIn:
    """Reads like an OllamaStream (wait_head, read_payload, interrupt, close) over several started streams."""

    status = 200
    headers: dict = {}

    def __init__(self, streams: list, wait: float, max_line: int):
        self._streams = streams  # [(upstream name, stream)]
        self._queue: queue.Queue = queue.Queue()
        self._open = len(streams)
        self._failed = False
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._pump, args=(name, stream, wait, max_line), daemon=True)
                         for name, stream in streams]
        for thread in self._threads:
            thread.start()

    def _pump(self, name: str, stream, wait: float, max_line: int) -> None:
        lines = Lines(max_line)
        try:
            while not stream.wait_head(wait):
                if self._closed.is_set():
                    return
            while not self._closed.is_set():
                payload = stream.read_payload(wait)
                if payload is None:
                    break
                out = [self._tagged(line, name) for line in lines.feed(payload)] if payload else []
                if out:
                    self._queue.put(b"".join(out))
        except OllamaError as error:
            self._queue.put(_line({"error": error.detail, "upstream": name}))
            self._failed = True
        except Exception as error:  # a dropped connection, bad framing: this upstream's pull failed
            self._queue.put(_line({"error": f"The pull on {name} failed ({type(error).__name__})", "upstream": name}))
            self._failed = True
        finally:
            stream.close()
            self._queue.put(_DONE)

    def _tagged(self, line: bytes, name: str) -> bytes:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = {"error": "Ollama sent a line that is not JSON"}
        if not isinstance(obj, dict):
            obj = {"error": "Ollama sent a line that is not a JSON object"}
        if "error" in obj:
            self._failed = True
        return _line({**obj, "upstream": name})

    def wait_head(self, wait: float, raw: bool = False) -> bool:
        return True

    def read_payload(self, wait: float) -> bytes | None:
        """The lines that arrived from any upstream; b"" after `wait` of silence; None once all have ended."""
        if self._open == 0:
            return None
        pieces = []
        while True:
            try:
                item = self._queue.get(timeout=wait) if not pieces else self._queue.get_nowait()
            except queue.Empty:
                return b"".join(pieces)
            if item is _DONE:
                self._open -= 1
                if self._open == 0:
                    if not self._failed:
                        pieces.append(_line({"status": "success"}))
                    return b"".join(pieces) or None
                continue
            pieces.append(item)

    def drain(self, wait: float) -> None:
        """Every pull has ended by the time the last line came: nothing to read."""

    def interrupt(self) -> None:
        for _, stream in self._streams:
            stream.interrupt()

    def close(self) -> None:
        self._closed.set()
        self.interrupt()


def _line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
