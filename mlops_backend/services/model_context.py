"""How many tokens a model's context holds, from its `/api/show` (`model_info`'s `<family>.context_length`),
remembered per worker for a few minutes so a conversation's turns do not each ask."""

from __future__ import annotations

import threading
import time

REMEMBER_SECONDS = 300.0


class ContextLengths:
    def __init__(self, show, remember: float = REMEMBER_SECONDS):
        """`show(model)` returns Ollama's /api/show answer for the model (or raises its error)."""
        self._show, self._remember = show, remember
        self._known: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str) -> int | None:
        """The model's context length, or None when Ollama does not say."""
        now = time.monotonic()
        with self._lock:
            known = self._known.get(model)
        if known is not None and now - known[0] < self._remember:
            return known[1]
        info = (self._show(model) or {}).get("model_info") or {}
        length = next((value for name, value in info.items()
                       if name.endswith(".context_length") and isinstance(value, int) and value > 0), None)
        with self._lock:
            self._known[model] = (now, length)
        return length
