"""The response cache (CACHE_URL): answers to requests meant to repeat, stored once and replayed.

What is cached is a normalised answer, the same whichever way it was asked (whole or streamed) or
will be replayed: the model's thinking, its text, its tool calls and the final statistics. A key
covers everything that changes an answer: the upstream route (which fixes the dialect Ollama
answers in), the model and its digest from /api/tags (a re-pulled model never serves old answers),
every body field but `stream` and `keep_alive`, and the scope (the key's name, or everyone's with
CACHE_SCOPE=global).

Only requests meant to repeat are cached (CACHE_MODE=deterministic, the default): temperature 0,
or a seed with top_k 1 and top_p 1 (or unset); an omitted temperature is not 0 (Ollama's default
is 0.8). CACHE_MODE=all caches every one. `Cache-Control: no-store` keeps a request out of the
cache; `no-cache` reads past it, then stores the fresh answer.

Stores: memory:// (per worker, LRU bounded by CACHE_MAX_MB) or redis://... (shared). A store that
fails (Redis down) is bypassed, logged at most once a minute; a request never fails for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict

from ..observability import metrics
from ..upstream.model_names import canonical

log = logging.getLogger(__name__)

#: Body fields that never change an answer, left out of the key (compared case-insensitively).
NEUTRAL = {"stream", "keep_alive", "keepalive", "stream_options"}
#: The key's version: bump it when the normalised form changes.
VERSION = 1
#: Seconds between warnings that the store is failing.
WARN_EVERY = 60.0

HIT, MISS, BYPASS, STORE = "HIT", "MISS", "BYPASS", "STORE"


def _fold(name: str) -> str:
    return name.lower()


def _get(obj: dict, name: str, default=None):
    """A field of a JSON object, its name compared case-insensitively (as Go's decoder does)."""
    if name in obj:
        return obj[name]
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == name:
            return value
    return default


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _same_numbers(value):
    """`value` with whole floats as ints: 0 and 0.0 mean the same to Ollama, and so to the key."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _same_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_numbers(v) for v in value]
    return value


def deterministic(body: dict) -> bool:
    """Whether a request is meant to repeat: temperature 0; or a seed with top_k 1 and top_p 1 (or unset).

    Ollama's sampling lives in `options`; OpenAI's fields (temperature, seed, top_p) at the top.
    """
    options = _get(body, "options")
    fields = {**{k.lower(): v for k, v in body.items() if isinstance(k, str)},
              **({k.lower(): v for k, v in options.items() if isinstance(k, str)} if isinstance(options, dict) else {})}
    temperature = _number(fields.get("temperature"))
    if temperature is not None and temperature == 0:
        return True
    seed, top_k, top_p = fields.get("seed"), _number(fields.get("top_k")), fields.get("top_p")
    return (_number(seed) is not None and top_k == 1 and (top_p is None or _number(top_p) == 1))


def directives(header: str | None) -> set:
    """The Cache-Control directives of a request, lower case."""
    return {part.strip().split("=", 1)[0].lower() for part in (header or "").split(",") if part.strip()}


class MemoryStore:
    """Entries in this worker: least recently used first out once CACHE_MAX_MB is reached."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._entries.get(key)
            if item is None:
                return None
            if item[0] <= time.time():
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return item[1]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (time.time() + ttl, value)
            self._size += len(value)
            while self._size > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        self._size -= len(self._entries.pop(key)[1])

    def close(self) -> None:
        self._entries.clear()


class RedisStore:
    """Entries in Redis, shared by every worker and instance; each expires after CACHE_TTL_SECONDS."""

    def __init__(self, url: str, prefix: str = "mlops:cache:"):
        import redis

        self.prefix = prefix
        self._redis = redis.Redis.from_url(url.replace("redis+unix://", "unix://", 1), socket_timeout=0.5,
                                           socket_connect_timeout=0.5)

    def get(self, key: str) -> bytes | None:
        return self._redis.get(self.prefix + key)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._redis.set(self.prefix + key, value, ex=max(1, int(ttl)))

    def close(self) -> None:
        self._redis.close()


class Digests:
    """Each model's digest from /api/tags, read at most every `seconds` (never once per request)."""

    def __init__(self, fetch, seconds: float):
        self._fetch, self.seconds = fetch, seconds
        self._digests: dict[str, str] = {}
        self._read = 0.0
        self._lock = threading.Lock()

    def get(self, model: str) -> str | None:
        now = time.monotonic()
        if now - self._read >= self.seconds and self._lock.acquire(blocking=not self._digests):
            try:
                if time.monotonic() - self._read >= self.seconds:
                    self._digests = {canonical(str(entry.get("name") or entry.get("model") or "")):
                                     str(entry.get("digest") or "") for entry in self._fetch()}
                    self._read = time.monotonic()
            except Exception as error:  # Ollama unreachable: the digests known stay, asked again in `seconds`
                self._read = time.monotonic()
                log.debug("Could not read the models' digests: %s", error)
            finally:
                self._lock.release()
        return self._digests.get(canonical(model)) or None


class Lookup:
    """One request's dealings with the cache: its key, what it found, and whether its answer is stored."""

    __slots__ = ("cache", "key", "state", "entry", "age")

    def __init__(self, cache, key, state, entry=None, age=0):
        self.cache, self.key, self.state, self.entry, self.age = cache, key, state, entry, age

    @property
    def hit(self) -> bool:
        return self.state == HIT

    @property
    def storing(self) -> bool:
        return self.state in (MISS, STORE)

    def headers(self) -> dict:
        if self.state is None:
            return {}
        headers = {"X-Cache": self.state}
        if self.hit:
            headers["Age"] = str(self.age)
        return headers

    def store(self, entry: dict | None) -> None:
        """Keep a normalised answer (None: the answer was not one to keep)."""
        if entry is not None and self.storing:
            self.cache.put(self.key, entry)


OFF = Lookup(None, None, BYPASS)
#: No cache configured: no headers, nothing stored.
NONE = Lookup(None, None, None)


class Cache:
    """The cache of one app: its store, the models' digests, and the rules of what is kept."""

    def __init__(self, config, store, digests: Digests):
        self.config, self.store, self.digests = config, store, digests
        self.ttl = config.cache_ttl_seconds
        self.max_entry = config.cache_max_entry_kb * 1024
        self._warned = 0.0

    @classmethod
    def build(cls, config, router):
        """The app's cache, or None when CACHE_URL is empty (no cost at all)."""
        url = config.cache_url
        if not url:
            return None
        store = MemoryStore(config.cache_max_mb * 1024 * 1024) if url.startswith("memory://") else RedisStore(url)
        from ..upstream import views

        return cls(config, store, Digests(lambda: views.installed(router), config.cache_digest_seconds))

    def close(self) -> None:
        self.store.close()

    def _failed(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("The response cache is unavailable, bypassing it: %s", error)

    def key(self, route: str, body: dict, scope: str) -> str | None:
        """The entry's key, or None when the model's digest is unknown (then nothing is cached)."""
        model = _get(body, "model")
        if not isinstance(model, str) or not model.strip():
            return None
        digest = self.digests.get(model)
        if digest is None:
            return None
        rest = {k: v for k, v in body.items() if not (isinstance(k, str) and _fold(k) in NEUTRAL | {"model"})}
        material = {"v": VERSION, "route": route, "model": canonical(model), "digest": digest,
                    "scope": scope if self.config.cache_scope == "key" else "*", "body": _same_numbers(rest)}
        text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def begin(self, route: str, body: dict, scope: str, cache_control: str | None) -> Lookup:
        """Look the request up: HIT (with its entry), MISS (store the answer), STORE (no-cache: store without
        reading) or BYPASS (not cacheable, no-store, or the store is down)."""
        asked = directives(cache_control)
        if "no-store" in asked or (self.config.cache_mode != "all" and not deterministic(body)):
            metrics.CACHE_REQUESTS.labels(BYPASS.lower()).inc()
            return OFF
        key = self.key(route, body, scope)
        if key is None:
            metrics.CACHE_REQUESTS.labels(BYPASS.lower()).inc()
            return OFF
        if "no-cache" in asked:
            metrics.CACHE_REQUESTS.labels(STORE.lower()).inc()
            return Lookup(self, key, STORE)
        try:
            raw = self.store.get(key)
        except Exception as error:
            self._failed(error)
            metrics.CACHE_REQUESTS.labels(BYPASS.lower()).inc()
            return OFF
        if raw is not None:
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                metrics.CACHE_REQUESTS.labels(HIT.lower()).inc()
                metrics.CACHE_BYTES.labels("read").inc(len(raw))
                age = max(0, int(time.time() - entry.get("stored", time.time())))
                return Lookup(self, key, HIT, entry, age)
        metrics.CACHE_REQUESTS.labels(MISS.lower()).inc()
        return Lookup(self, key, MISS)

    def put(self, key: str, entry: dict) -> None:
        raw = json.dumps({**entry, "stored": time.time()}, separators=(",", ":"), ensure_ascii=False).encode()
        if len(raw) > self.max_entry:
            metrics.CACHE_REQUESTS.labels("too_big").inc()
            return
        try:
            self.store.set(key, raw, self.ttl)
        except Exception as error:
            self._failed(error)
            return
        metrics.CACHE_BYTES.labels("written").inc(len(raw))


# -- the normalised answer -------------------------------------------------------------------------------------

#: Fields of Ollama's final object that are content, not statistics.
CONTENT = {"model", "created_at", "response", "thinking", "message", "done", "context", "logprobs"}


def from_ollama(answer: dict) -> dict | None:
    """The normalised form of a whole Ollama answer (generate or chat); None for an error."""
    if not isinstance(answer, dict) or "error" in answer or not answer.get("done", True):
        return None
    message = answer.get("message") if isinstance(answer.get("message"), dict) else None
    source = message if message is not None else answer
    return {"model": answer.get("model"), "created_at": answer.get("created_at"),
            "thinking": source.get("thinking") or "",
            "text": (message.get("content") if message is not None else answer.get("response")) or "",
            "tool_calls": (message or {}).get("tool_calls") or None,
            "final": {k: v for k, v in answer.items() if k not in CONTENT}}


class Collector:
    """Builds the normalised answer from a stream's pieces, in the order they came."""

    def __init__(self):
        self.model = self.created_at = None
        self.thinking, self.text, self.tool_calls = [], [], []
        self.final = None
        self.failed = False

    def piece(self, thinking=None, text=None, tool_calls=None):
        if thinking:
            self.thinking.append(thinking)
        if text:
            self.text.append(text)
        if tool_calls:
            self.tool_calls.extend(tool_calls)

    def ollama_line(self, obj) -> None:
        """One line of Ollama's NDJSON stream."""
        if not isinstance(obj, dict) or "error" in obj:
            self.failed = True
            return
        self.model = obj.get("model", self.model)
        self.created_at = obj.get("created_at", self.created_at)
        message = obj.get("message") if isinstance(obj.get("message"), dict) else None
        source = message if message is not None else obj
        self.piece(source.get("thinking"), message.get("content") if message is not None else obj.get("response"),
                   (message or {}).get("tool_calls"))
        if obj.get("done"):
            self.final = {k: v for k, v in obj.items() if k not in CONTENT}

    def sse_event(self, obj) -> None:
        """One event of our SSE grammar (sse.py)."""
        if not isinstance(obj, dict) or "error" in obj:
            self.failed = True
            return
        self.piece(obj.get("thinking"), obj.get("text"), obj.get("tool_calls"))
        if obj.get("done"):
            self.final = {k: v for k, v in obj.items() if k != "done"}

    def entry(self, model: str) -> dict | None:
        if self.failed or self.final is None:
            return None
        return {"model": self.model or model, "created_at": self.created_at, "thinking": "".join(self.thinking),
                "text": "".join(self.text), "tool_calls": self.tool_calls or None, "final": self.final}


# OpenAI's shapes (/v1/chat/completions and /v1/completions): one choice; the tool calls kept as OpenAI's.

#: The fields of an OpenAI answer that name it rather than carry content, replayed as stored.
OPENAI_HEAD = ("id", "object", "created", "model", "system_fingerprint")


def from_openai(answer: dict, chat: bool) -> dict | None:
    """The normalised form of a whole OpenAI chat or legacy completion; None for an error or several choices."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if "error" in answer or not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message") or {} if chat else {}
    return {"head": {k: answer[k] for k in OPENAI_HEAD if k in answer},
            "thinking": message.get("reasoning") or "",
            "text": (message.get("content") if chat else choice.get("text")) or "",
            "tool_calls": message.get("tool_calls") or None,
            "final": {"finish_reason": choice.get("finish_reason"), "usage": answer.get("usage")}}


class OpenAICollector:
    """Builds the normalised answer from OpenAI stream chunks (data: lines), through `data: [DONE]`."""

    def __init__(self, chat: bool):
        self.chat, self.head, self.failed, self.done = chat, None, False, False
        self.thinking, self.text, self.tool_calls = [], [], []
        self.finish, self.usage = None, None

    def record(self, obj) -> None:
        if obj == "[DONE]":
            self.done = True
            return
        if not isinstance(obj, dict) or "error" in obj:
            self.failed = True
            return
        if self.head is None:
            self.head = {k: obj[k] for k in OPENAI_HEAD if k in obj}
        if obj.get("usage"):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                self.failed = True
                return
            delta = choice.get("delta") or {} if self.chat else {}
            if delta.get("reasoning"):
                self.thinking.append(delta["reasoning"])
            text = delta.get("content") if self.chat else choice.get("text")
            if text:
                self.text.append(text)
            if delta.get("tool_calls"):
                self.tool_calls.extend(delta["tool_calls"])
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def entry(self) -> dict | None:
        # Without stream_options.include_usage the stream has no usage: not enough to answer a whole request.
        if self.failed or not self.done or self.head is None or self.finish is None or self.usage is None:
            return None
        head = {**self.head, "object": "chat.completion" if self.chat else "text_completion"}
        return {"head": head, "thinking": "".join(self.thinking), "text": "".join(self.text),
                "tool_calls": self.tool_calls or None, "final": {"finish_reason": self.finish, "usage": self.usage}}


def openai_whole(entry: dict, chat: bool) -> dict:
    head, final = entry.get("head") or {}, entry.get("final") or {}
    answer = {**head, "object": "chat.completion" if chat else "text_completion"}
    if chat:
        message = {"role": "assistant", "content": entry.get("text", "")}
        if entry.get("thinking"):
            message["reasoning"] = entry["thinking"]
        if entry.get("tool_calls"):
            message["tool_calls"] = entry["tool_calls"]
        choice = {"index": 0, "message": message, "finish_reason": final.get("finish_reason")}
    else:
        choice = {"text": entry.get("text", ""), "index": 0, "finish_reason": final.get("finish_reason")}
    answer["choices"] = [choice]
    if final.get("usage") is not None:
        answer["usage"] = final["usage"]
    return answer


def openai_chunks(entry: dict, chat: bool, usage: bool) -> list:
    """A stored answer as OpenAI stream chunks: reasoning, text, tool calls, the finish, usage if asked; then
    the caller's `data: [DONE]`."""
    head, final = entry.get("head") or {}, entry.get("final") or {}
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

    def chunk(finish=None, **delta):
        if chat:
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return {**head, "choices": [{"text": delta.get("content", ""), "index": 0, "finish_reason": finish}]}

    chunks, role = [], {"role": "assistant"} if chat else {}
    if entry.get("thinking") and chat:
        chunks.append(chunk(**role, content="", reasoning=entry["thinking"]))
        role = {}
    if entry.get("text"):
        chunks.append(chunk(**role, content=entry["text"]))
        role = {}
    if entry.get("tool_calls") and chat:
        chunks.append(chunk(**role, content="", tool_calls=entry["tool_calls"]))
    chunks.append(chunk(final.get("finish_reason")) if chat else chunk(final.get("finish_reason"), content=""))
    if usage and final.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": final["usage"]})
    return chunks


def tokens(entry: dict) -> int:
    """The tokens a hit saved: the stored answer's prompt and completion counts."""
    final = entry.get("final") or {}
    return sum(value for value in (final.get("prompt_eval_count"), final.get("eval_count"))
               if isinstance(value, int))


# -- replays -----------------------------------------------------------------------------------------------------

def ollama_whole(entry: dict, chat: bool) -> dict:
    """A stored answer as Ollama's whole generate or chat answer."""
    answer = {"model": entry.get("model")}
    if entry.get("created_at") is not None:
        answer["created_at"] = entry["created_at"]
    if chat:
        message = {"role": "assistant", "content": entry.get("text", "")}
        if entry.get("thinking"):
            message["thinking"] = entry["thinking"]
        if entry.get("tool_calls"):
            message["tool_calls"] = entry["tool_calls"]
        answer["message"] = message
    else:
        answer["response"] = entry.get("text", "")
        if entry.get("thinking"):
            answer["thinking"] = entry["thinking"]
    answer["done"] = True
    answer.update(entry.get("final") or {})
    return answer


def ollama_lines(entry: dict, chat: bool) -> list[dict]:
    """A stored answer as Ollama's NDJSON stream: thinking, text, tool calls, then the final statistics."""
    head = {"model": entry.get("model")}
    if entry.get("created_at") is not None:
        head["created_at"] = entry["created_at"]

    def line(**content):
        if chat:
            return {**head, "message": {"role": "assistant", "content": "", **content}, "done": False}
        return {**head, "response": content.pop("content", ""), **content, "done": False}

    lines = []
    if entry.get("thinking"):
        lines.append(line(thinking=entry["thinking"]))
    if entry.get("text"):
        lines.append(line(content=entry["text"]))
    if entry.get("tool_calls") and chat:
        lines.append(line(tool_calls=entry["tool_calls"]))
    final = line()
    final["done"] = True
    final.update(entry.get("final") or {})
    lines.append(final)
    return lines


def sse_events(entry: dict) -> list[dict]:
    """A stored answer in our SSE grammar: thinking, text, tool calls, then the done event."""
    events = []
    if entry.get("thinking"):
        events.append({"thinking": entry["thinking"]})
    if entry.get("text"):
        events.append({"text": entry["text"]})
    if entry.get("tool_calls"):
        events.append({"tool_calls": entry["tool_calls"]})
    events.append({"done": True, **(entry.get("final") or {})})
    return events


def lookup(gateway, route: str, body: dict, scope: str, cache_control: str | None) -> Lookup:
    """The request's Lookup (NONE without a cache)."""
    cache = for_gateway(gateway)
    if cache is None:
        return NONE
    return cache.begin(route, body, scope, cache_control)


def for_gateway(gateway) -> Cache | None:
    """The gateway's cache, built on a worker's first use; None when CACHE_URL is empty."""
    cache = gateway.cache
    if cache is None:
        cache = gateway.cache = Cache.build(gateway.config, gateway.upstreams) or False
    return cache or None
