"""Read the gateway's settings once, from the environment and `.env`, into one validated object."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from dotenv import dotenv_values

# upstream/ imports no HTTP library at module level: the master reads this before gevent patches ssl.
from .upstream.upstreams import UpstreamSpec, UpstreamsError, check_url, from_file, from_urls

PLACEHOLDER_KEY = "your-secret-api-key-change-this"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting has a value the gateway cannot run with; the message names the variable."""


def _boolean(name, raw):
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


def _number(kind, minimum=None, maximum=None):
    def parse(name, raw):
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ConfigError(f"{name}={raw!r} is out of range (must be {bounds})")
        return value

    return parse


def _url(name, raw):
    try:
        return check_url(raw, name)
    except UpstreamsError as error:
        raise ConfigError(str(error)) from None


def _origins(name, raw):
    origins = [item.strip().rstrip("/") for item in raw.split(",") if item.strip()]
    for origin in origins:
        if origin != "*" and not urlsplit(origin).scheme.startswith("http"):
            raise ConfigError(f"{name} entry {origin!r} is not an origin such as https://app.example.com")
    return tuple(origins)


def _log_level(name, raw):
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"{name}={raw!r} is not a log level (debug, info, warning, error, critical)")
    return level


def _text(name, raw):
    return raw.strip()


def _choice(*choices):
    def parse(name, raw):
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(f"{name}={raw!r} must be one of: {', '.join(choices)}")
        return value

    return parse


def _storage_uri(name, raw):
    value = raw.strip()
    if urlsplit(value).scheme not in ("memory", "redis", "rediss", "redis+unix"):
        raise ConfigError(f"{name}={raw!r} is not memory://, redis://, rediss:// or redis+unix://")
    return value


def _cache_url(name, raw):
    value = raw.strip()
    if value and urlsplit(value).scheme not in ("memory", "redis", "rediss", "redis+unix"):
        raise ConfigError(f"{name}={raw!r} is not memory://, redis://, rediss:// or redis+unix:// (or empty: off)")
    return value


def _scopes(name, raw):
    from .security.keys import SCOPES, ScopeError, check_scopes

    scopes = [item.strip() for item in raw.split(",") if item.strip()]
    try:
        return check_scopes(scopes)
    except ScopeError as error:
        raise ConfigError(f"{name}={raw!r}: {error} (known scopes: {', '.join(SCOPES)})") from None


def _addresses(name, raw):
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        if item != "*":
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ConfigError(f"{name} entry {item!r} is not an IP address (or *)") from None
    return items


def _routes(name, raw):
    from .security.route_policy import RouteError, parse_open_routes

    try:
        return parse_open_routes(raw)
    except RouteError as error:
        raise ConfigError(f"{name}: {error}") from None


def _database_url(name, raw):
    value = raw.strip()
    if "://" not in value:
        raise ConfigError(f"{name}={raw!r} is not a database URL such as sqlite:///usage.db")
    return value


#: Either variable turns traces on.
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def _setting(env, default, parse, doc):
    return dataclasses.field(default=None, metadata={"env": env, "default": default, "parse": parse, "doc": doc})


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the gateway; `Config.from_env()` builds it, `SETTINGS` documents it."""

    ollama_base_url: str = _setting("OLLAMA_BASE_URL", "http://localhost:11434", _url,
                                    "Ollama server the gateway relays to (when it fronts one)")
    ollama_base_urls: str = _setting("OLLAMA_BASE_URLS", "", _text,
                                     "Several Ollama servers, URLs separated by commas (or ;), named host:port")
    ollama_upstreams_file: str = _setting("OLLAMA_UPSTREAMS_FILE", "", _text,
                                          "TOML file of [[upstreams]] (name, url, weight, max_parallel, models, ca_bundle)")
    upstream_refresh_seconds: float = _setting(
        "UPSTREAM_REFRESH_SECONDS", "5", _number(float, 0.1),
        "With several upstreams: how often each one's models (/api/tags, /api/ps) and health are read",
    )
    upstream_retries: int = _setting(
        "UPSTREAM_RETRIES", "2", _number(int, 0), "Other upstreams tried when one fails before its first byte"
    )
    upstream_failures: int = _setting(
        "UPSTREAM_FAILURES", "3", _number(int, 1), "Failures in a row that take an upstream out (open its circuit)"
    )
    upstream_cooldown_seconds: float = _setting(
        "UPSTREAM_COOLDOWN_SECONDS", "10", _number(float, 0.1),
        "How long an upstream stays out before one request probes it again",
    )
    api_key: str = _setting("API_KEY", "", _text, "Shared key clients send in X-API-Key or Authorization: Bearer")
    api_key_scopes: frozenset = _setting(
        "API_KEY_SCOPES", "use,admin", _scopes, "Scopes of the shared API_KEY (and of everyone when AUTH_ENABLED=false)"
    )
    auth_enabled: bool = _setting("AUTH_ENABLED", "true", _boolean, "Require the key on every route but health and docs")
    host: str = _setting("HOST", "0.0.0.0", _text, "Address gunicorn binds")
    port: int = _setting("PORT", "8000", _number(int, 1, 65535), "Port gunicorn binds")
    debug: bool = _setting("DEBUG", "false", _boolean, "Development only: start even while API_KEY is empty or the placeholder")
    allowed_origins: tuple = _setting(
        "ALLOWED_ORIGINS", "http://localhost:3000", _origins, "Comma-separated browser origins allowed by CORS"
    )
    ollama_timeout: float = _setting(
        "OLLAMA_TIMEOUT", "300", _number(float, 0.1), "Seconds Ollama may stay silent (before its first byte or between chunks)"
    )
    ollama_connect_timeout: float = _setting(
        "OLLAMA_CONNECT_TIMEOUT", "5", _number(float, 0.1), "Seconds to open a connection to Ollama"
    )
    ollama_first_byte_timeout: float = _setting(
        "OLLAMA_FIRST_BYTE_TIMEOUT", "", _number(float, 0.1), "Silence allowed before the first byte (default OLLAMA_TIMEOUT)"
    )
    ollama_chunk_timeout: float = _setting(
        "OLLAMA_CHUNK_TIMEOUT", "", _number(float, 0.1), "Silence allowed between two chunks (default OLLAMA_TIMEOUT)"
    )
    ollama_request_timeout: float = _setting(
        "OLLAMA_REQUEST_TIMEOUT", "900", _number(float, 0.1), "Whole-call limit for non-streaming calls"
    )
    health_timeout: float = _setting(
        "OLLAMA_HEALTH_TIMEOUT", "2", _number(float, 0.1), "Whole-call limit for the readiness probe"
    )
    default_model: str = _setting("DEFAULT_MODEL", "", _text, "Model used when a request names none")
    max_body_bytes: int = _setting(
        "MAX_BODY_BYTES", str(10 * 1024 * 1024), _number(int, 1024), "Largest request body accepted (413 beyond)"
    )
    max_audio_bytes: int = _setting(
        "MAX_AUDIO_BYTES", str(25 * 1024 * 1024), _number(int, 1024),
        "Largest audio file /v1/audio/transcriptions accepts (413 beyond)",
    )
    max_document_bytes: int = _setting(
        "MAX_DOCUMENT_BYTES", str(20 * 1024 * 1024), _number(int, 1024),
        "Largest document POST /api/llm/documents accepts (413 beyond, decided before the body is read)",
    )
    max_document_pages: int = _setting(
        "MAX_DOCUMENT_PAGES", "2000", _number(int, 1), "Most pages a PDF may have (413 beyond, before any is read)"
    )
    document_context_chars: int = _setting(
        "DOCUMENT_CONTEXT_CHARS", "24000", _number(int, 500),
        "Documents whose text fits are sent whole; larger ones as their chunks closest to the question",
    )
    embed_model: str = _setting(
        "EMBED_MODEL", "all-minilm", _text, "The embedding model that ranks a large document's chunks"
    )
    conversation_retention_days: float = _setting(
        "CONVERSATION_RETENTION_DAYS", "0", _number(float, 0),
        "Delete conversations (and stored Responses) untouched for this many days, hourly (0: keep them)",
    )
    responses_store: bool = _setting(
        "RESPONSES_STORE", "true", _boolean,
        "Store /v1/responses answers (store: true, OpenAI's default) so previous_response_id works",
    )
    cache_url: str = _setting(
        "CACHE_URL", "", _cache_url,
        "The response cache: memory:// (per worker) or redis://host:6379/0 (shared); empty: no cache",
    )
    cache_mode: str = _setting(
        "CACHE_MODE", "deterministic", _choice("deterministic", "all"),
        "deterministic: cache only requests meant to repeat (temperature 0, or a seed with top_k 1); all: every one",
    )
    cache_scope: str = _setting(
        "CACHE_SCOPE", "key", _choice("key", "global"),
        "key: each API key has its own cached answers; global: keys share them",
    )
    cache_ttl_seconds: float = _setting(
        "CACHE_TTL_SECONDS", "3600", _number(float, 1), "How long a cached answer is kept",
    )
    cache_max_mb: float = _setting(
        "CACHE_MAX_MB", "64", _number(float, 0), "memory:// only: each worker's cache size, least recently used out",
    )
    cache_max_entry_kb: float = _setting(
        "CACHE_MAX_ENTRY_KB", "256", _number(float, 0), "Answers bigger than this are not cached",
    )
    cache_digest_seconds: float = _setting(
        "CACHE_DIGEST_SECONDS", "10", _number(float, 0),
        "How often the cache re-reads the models' digests from /api/tags (a re-pulled model then misses)",
    )
    ollama_version_public: bool = _setting(
        "OLLAMA_VERSION_PUBLIC", "true", _boolean,
        "Answer GET /ollama/ and /ollama/api/version without a key, as probes and clients' connection tests expect",
    )
    log_level: str = _setting("LOG_LEVEL", "info", _log_level, "debug, info, warning, error or critical")
    sse_heartbeat_seconds: float = _setting(
        "SSE_HEARTBEAT_SECONDS", "10", _number(float, 0.05), "Seconds between SSE comment lines while Ollama is silent"
    )
    stream_status_wait: float = _setting(
        "STREAM_STATUS_WAIT", "1", _number(float, 0.0),
        "Seconds a stream waits for Ollama's status line so early errors keep their HTTP status",
    )
    max_prompt_chars: int = _setting(
        "MAX_PROMPT_CHARS", "1000000", _number(int, 1), "Largest prompt (or all chat messages together), in characters"
    )
    max_image_bytes: int = _setting(
        "MAX_IMAGE_BYTES", str(5 * 1024 * 1024), _number(int, 1), "Largest base64 image, in bytes of base64 text"
    )
    max_images_bytes: int = _setting(
        "MAX_IMAGES_BYTES", str(8 * 1024 * 1024), _number(int, 1), "Largest total of base64 images in one request"
    )
    embed_max_inputs: int = _setting(
        "EMBED_MAX_INPUTS", "256", _number(int, 1), "Most texts one embed request may carry (422 beyond)"
    )
    embed_max_bytes: int = _setting(
        "EMBED_MAX_BYTES", str(1024 * 1024), _number(int, 1), "Largest total size of embed inputs, in bytes (413 beyond)"
    )
    allow_unknown_options: bool = _setting(
        "ALLOW_UNKNOWN_OPTIONS", "false", _boolean, "Pass option names the gateway does not know through to Ollama"
    )
    api_keys_file: str = _setting(
        "API_KEYS_FILE", "", _text, "JSON or TOML file of named keys (hashes, scopes, limits); managed with `flask keys`"
    )
    keys_store: str = _setting(
        "KEYS_STORE", "file", _choice("file", "database"),
        "Where named keys live: file (API_KEYS_FILE) or database (DATABASE_URL, managed over /api/keys)",
    )
    tokens_per_minute: int = _setting(
        "TOKENS_PER_MINUTE", "0", _number(int, 0), "Tokens (prompt + completion) per minute per key by default (0: no limit)"
    )
    tokens_per_day: int = _setting(
        "TOKENS_PER_DAY", "0", _number(int, 0), "Tokens per UTC day per key by default (0: no limit)"
    )
    tokens_per_month: int = _setting(
        "TOKENS_PER_MONTH", "0", _number(int, 0), "Tokens per UTC calendar month per key by default (0: no limit)"
    )
    rate_limit_per_minute: int = _setting(
        "RATE_LIMIT_PER_MINUTE", "0", _number(int, 0), "Requests per minute per key unless the key sets its own (0: no limit)"
    )
    streams_per_key: int = _setting(
        "STREAMS_PER_KEY", "0", _number(int, 0),
        "Generations in flight per key, streamed or not, unless the key sets its own (0: no limit)",
    )
    slot_lease_seconds: float = _setting(
        "SLOT_LEASE_SECONDS", "30", _number(float, 1),
        "With Redis: a worker that dies holding generation slots frees them after at most this long",
    )
    auth_failures_per_minute: int = _setting(
        "AUTH_FAILURES_PER_MINUTE", "60", _number(int, 0),
        "Requests with a missing or wrong key per client address per minute, then 429 (0: no limit)",
    )
    forwarded_allow_ips: tuple = _setting(
        "FORWARDED_ALLOW_IPS", "127.0.0.1,::1", _addresses,
        "Proxies trusted for X-Forwarded-For (the client address of limits) and X-Forwarded-Proto, * for any",
    )
    rate_limit_storage: str = _setting(
        "RATE_LIMIT_STORAGE", "memory://", _storage_uri,
        "Where limits are counted: memory:// (one process) or redis://host:6379/0 (shared by all workers)",
    )
    database_url: str = _setting(
        "DATABASE_URL", "sqlite:///usage.db", _database_url,
        "Where usage, conversations, documents and stored Responses are kept (SQLAlchemy URL; SQLite or PostgreSQL)"
    )
    usage_flush_seconds: float = _setting(
        "USAGE_FLUSH_SECONDS", "2", _number(float, 0.05), "How often each worker writes its usage counts to the database"
    )
    metrics_public: bool = _setting(
        "METRICS_PUBLIC", "false", _boolean, "Serve /metrics without a key (otherwise an admin key is required)"
    )
    metrics_key_labels: bool = _setting(
        "METRICS_KEY_LABELS", "true", _boolean,
        "Label the per-key token counter with key names (false: one series for all keys, for thousands of keys)",
    )
    open_upstream_routes: tuple = _setting(
        "OPEN_UPSTREAM_ROUTES", "", _routes,
        "More Ollama or /v1 routes to relay, as `METHOD /path=scope` items (see README); all others answer 403",
    )
    max_upstream_line_bytes: int = _setting(
        "MAX_UPSTREAM_LINE_BYTES", str(16 * 1024 * 1024), _number(int, 1024),
        "Longest NDJSON line (or whole JSON answer) accepted from Ollama; a longer one ends the answer with 502",
    )
    log_format: str = _setting("LOG_FORMAT", "text", _choice("text", "json"), "text or json (one JSON object per line)")
    log_prompts: bool = _setting(
        "LOG_PROMPTS", "false", _boolean, "Put prompts and messages in the request log lines (off: they are never logged)"
    )
    #: The Ollama servers (upstream.upstreams.UpstreamSpec), from the three settings above.
    upstreams: tuple = ()
    #: OpenTelemetry traces on: an OTLP endpoint is set and OTEL_SDK_DISABLED is not true (the SDK reads
    #: those and its other OTEL_* variables itself; see observability/tracing.py).
    tracing: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | None = ".env") -> Config:
        """Build the config from `environ` (default os.environ) over the values of `env_file`."""
        values = {}
        if env_file and os.path.isfile(env_file):
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Config:
        """Parse and check every setting from a plain mapping of variable names to strings."""
        parsed = {}
        for field in dataclasses.fields(cls):
            meta = field.metadata
            if "env" not in meta:
                continue
            raw = str(values.get(meta["env"]) or "").strip() or meta["default"]
            # An unset optional number stays None and takes its value from another setting below.
            parsed[field.name] = None if raw == "" and meta["parse"] is not _text else meta["parse"](meta["env"], raw)
        parsed["ollama_first_byte_timeout"] = parsed["ollama_first_byte_timeout"] or parsed["ollama_timeout"]
        parsed["ollama_chunk_timeout"] = parsed["ollama_chunk_timeout"] or parsed["ollama_timeout"]
        parsed["open_upstream_routes"] = parsed["open_upstream_routes"] or ()
        parsed["upstreams"] = _upstreams(parsed)
        parsed["stream_status_wait"] = min(parsed["stream_status_wait"], parsed["sse_heartbeat_seconds"])
        parsed["tracing"] = (any(str(values.get(name) or "").strip() for name in OTLP_ENDPOINTS)
                             and str(values.get("OTEL_SDK_DISABLED") or "").strip().lower() != "true")
        config = cls(**parsed)
        config.check_security()
        return config

    def check_security(self):
        """Refuse to run with auth on and no real key, unless in debug mode.

        With a keys file the shared API_KEY may be left empty, but never the placeholder.
        """
        if not self.auth_enabled or self.debug:
            return
        if self.api_key == PLACEHOLDER_KEY or (not self.api_key and not self.api_keys_file
                                               and self.keys_store != "database"):
            what = "empty" if not self.api_key else "still the placeholder from .env.example"
            raise ConfigError(f"API_KEY is {what}: set a secret key (or API_KEYS_FILE), "
                              "or AUTH_ENABLED=false to run without auth")



def _upstreams(parsed: dict) -> tuple:
    """The Ollama servers: OLLAMA_UPSTREAMS_FILE, else OLLAMA_BASE_URLS, else OLLAMA_BASE_URL alone."""
    try:
        if parsed["ollama_upstreams_file"] and parsed["ollama_base_urls"]:
            raise UpstreamsError("OLLAMA_UPSTREAMS_FILE and OLLAMA_BASE_URLS are both set: keep one")
        if parsed["ollama_upstreams_file"]:
            return from_file(parsed["ollama_upstreams_file"])
        if parsed["ollama_base_urls"]:
            return from_urls(parsed["ollama_base_urls"], "OLLAMA_BASE_URLS")
    except UpstreamsError as error:
        raise ConfigError(str(error)) from None
    url = parsed["ollama_base_url"]
    return (UpstreamSpec(from_urls(url, "OLLAMA_BASE_URL")[0].name, url),)


SETTINGS = [(f.metadata["env"], f.metadata["default"], f.metadata["doc"]) for f in dataclasses.fields(Config)
            if "env" in f.metadata]
