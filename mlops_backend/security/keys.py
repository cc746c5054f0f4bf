"""Named API keys: stored only as SHA-256 hashes, each with scopes, limits, a token budget and an expiry.

They live in a JSON or TOML file (KEYS_STORE=file), re-read when it changes (checked at most once a
second), or in the database (KEYS_STORE=database, security/key_store.py), re-read when its version
changes (polled at most once a second): `keys create` and `keys revoke` take effect without a
restart. A file that fails to parse, or a database that does not answer, leaves the last good keys
in force.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
import tomllib

import tomli_w

from ..upstream.model_names import canonical

log = logging.getLogger(__name__)

#: use: the LLM routes; admin: also model management, usage and metrics; cloud: models and tools that
#: a signed-in Ollama runs on ollama.com (on the operator's account), added to use or admin.
SCOPES = ("use", "admin", "cloud")
TOKEN_PREFIX = "mlk_"
SHARED_KEY_NAME = "default"
#: Names the gateway gives callers itself: the shared API_KEY, and everyone when auth is off.
RESERVED_NAMES = (SHARED_KEY_NAME, "anonymous")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: A file entry's fields, and what its `limits` and `budget` tables may hold.
ENTRY_FIELDS = ("name", "sha256", "scopes", "models", "limits", "budget", "expires_at", "disabled", "created")
LIMIT_FIELDS = ("requests_per_minute", "concurrent_streams", "tokens_per_minute")
BUDGET_FIELDS = ("tokens_per_day", "tokens_per_month")


class KeyFileError(ValueError):
    """The keys file cannot be used; the message names the file and the entry."""


class ScopeError(ValueError):
    """A list of scopes the gateway cannot grant."""


def check_scopes(scopes) -> frozenset:
    """Return the scopes as a set, or raise ScopeError: known names, and cloud only beside use or admin."""
    scopes = list(scopes)
    if not scopes:
        raise ScopeError("no scope given")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ScopeError(f"unknown scopes {unknown}")
    if set(scopes) == {"cloud"}:
        raise ScopeError("cloud adds to use or admin; give one of them too")
    return frozenset(scopes)


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """Who a request is: a key's name, what it may do, and its own limits (None: the defaults)."""

    name: str
    scopes: frozenset = frozenset(SCOPES)
    models: tuple | None = None
    requests_per_minute: int | None = None
    concurrent_streams: int | None = None
    #: Token limits of its own (None: TOKENS_PER_MINUTE, TOKENS_PER_DAY, TOKENS_PER_MONTH; 0: unlimited).
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    #: Unix time after which the key is refused (None: never), and whether an admin disabled it.
    expires_at: float | None = None
    disabled: bool = False
    allowed: frozenset | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        # The allow-list in canonical form, so every spelling Ollama reads as one model matches alike.
        if self.models is not None:
            object.__setattr__(self, "allowed", frozenset(canonical(model) for model in self.models))

    def expired(self, now: float | None = None) -> bool:
        """True once the key's expiry has passed."""
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    @property
    def limits(self) -> dict:
        """Its own rate limits (None: the gateway's default), as the keys file and the API name them."""
        return {field: getattr(self, field) for field in LIMIT_FIELDS}

    @property
    def budget(self) -> dict:
        """Its own token budget (None: the gateway's default)."""
        return {field: getattr(self, field) for field in BUDGET_FIELDS}

    def has_scope(self, scope: str) -> bool:
        """admin includes use; cloud is only ever given explicitly."""
        return scope in self.scopes or (scope == "use" and "admin" in self.scopes)

    def allows_model(self, model: str) -> bool:
        """True when the key has no allow-list, or the model (in any spelling Ollama reads alike) is on it."""
        return self.allowed is None or canonical(model) in self.allowed

    def visible(self, models: list, field: str = "name") -> list:
        """The entries of a model list (Ollama's or OpenAI's) this key may use."""
        if self.models is None:
            return models
        return [model for model in models if self.allows_model(model.get(field, ""))]


def new_token() -> str:
    """A fresh key: 32 random bytes, URL-safe, with a prefix that makes leaked keys easy to grep for."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """The only form in which a named key is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_entries(path: str) -> list[dict]:
    """Read and check the file's entries; a missing file holds no keys."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return []
    try:
        data = tomllib.loads(raw.decode()) if _is_toml(path) else (json.loads(raw) if raw.strip() else {})
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: not valid {'TOML' if _is_toml(path) else 'JSON'}: {exc}") from None
    entries = data.get("keys", []) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f"{path}: expected an object with a list under \"keys\"")
    names = set()
    for index, entry in enumerate(entries):
        parse_entry(entry, f"{path}: keys[{index}]")
        if entry["name"] in names:
            raise KeyFileError(f"{path}: the name {entry['name']!r} appears twice")
        names.add(entry["name"])
    return entries


def write_entries(path: str, entries: list[dict]) -> None:
    """Replace the file atomically (readers never see half of it), readable by its owner only."""
    text = tomli_w.dumps({"keys": entries}) if _is_toml(path) else json.dumps({"keys": entries}, indent=2) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".keys-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def parse_time(value) -> float:
    """An ISO-8601 timestamp (a TOML datetime too) as Unix time; one without an offset is UTC."""
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if not isinstance(value, datetime.datetime):
        raise ValueError("not a timestamp")
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def format_time(stamp: float | None) -> str | None:
    """Unix time as ISO-8601 UTC (`2026-12-31T00:00:00Z`; milliseconds when it has a fraction)."""
    if stamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
    return moment.isoformat(timespec="seconds" if stamp == int(stamp) else "milliseconds").replace("+00:00", "Z")


def parse_entry(entry, where: str) -> ApiKey:
    """Check one entry of the file and return the key it describes."""
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: not an object")
    unknown = set(entry) - set(ENTRY_FIELDS)
    if unknown:
        raise KeyFileError(f"{where}: unknown fields {sorted(unknown)}")
    name, hashed, scopes = entry.get("name"), entry.get("sha256"), entry.get("scopes")
    if not isinstance(name, str) or not _NAME.match(name):
        raise KeyFileError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-'")
    if name in RESERVED_NAMES:
        raise KeyFileError(f"{where}: the name {name!r} is reserved (the shared API_KEY or AUTH_ENABLED=false)")
    if not isinstance(hashed, str) or not _DIGEST.match(hashed):
        raise KeyFileError(f"{where} ({name}): sha256 must be 64 lowercase hex digits")
    if not isinstance(scopes, list):
        raise KeyFileError(f"{where} ({name}): scopes must be a non-empty list of {', '.join(SCOPES)}")
    try:
        check_scopes(scopes)
    except ScopeError as error:
        raise KeyFileError(f"{where} ({name}): scopes: {error} (known: {', '.join(SCOPES)})") from None
    models = entry.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)):
        raise KeyFileError(f"{where} ({name}): models must be a list of model names")
    limits = _counts(entry, "limits", LIMIT_FIELDS, f"{where} ({name})",
                     "limits may hold requests_per_minute and concurrent_streams, and tokens_per_minute")
    budget = _counts(entry, "budget", BUDGET_FIELDS, f"{where} ({name})", "budget may hold tokens_per_day and "
                     "tokens_per_month")
    expires_at = entry.get("expires_at")
    if expires_at is not None:
        try:
            expires_at = parse_time(expires_at)
        except (ValueError, TypeError, OverflowError):
            raise KeyFileError(f"{where} ({name}): expires_at must be an ISO-8601 timestamp such as "
                               "2026-12-31T00:00:00Z") from None
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        raise KeyFileError(f"{where} ({name}): disabled must be true or false")
    return ApiKey(name, frozenset(scopes), tuple(models) if models is not None else None,
                  **limits, **budget, expires_at=expires_at, disabled=disabled)


def _counts(entry: dict, table: str, names: tuple, where: str, message: str) -> dict:
    """A `limits` or `budget` table: integers >= 0 (0: unlimited), each one missing is None (the default)."""
    values = entry.get(table, {})
    if not isinstance(values, dict) or set(values) - set(names):
        raise KeyFileError(f"{where}: {message}")
    for field, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise KeyFileError(f"{where}: {table}.{field} must be an integer >= 0 (0: unlimited)")
    return {field: values.get(field) for field in names}


def entry_for(name: str, sha256: str, scopes, models=None, limits=None, budget=None, expires_at: float | None = None,
              disabled: bool = False, created: str | None = None) -> dict:
    """The file entry for a key's settings (limits and budget without their None values), checked as the file is."""
    entry = {"name": name, "sha256": sha256,
             "scopes": sorted(set(scopes), key=lambda s: SCOPES.index(s) if s in SCOPES else len(SCOPES))}
    if models:
        entry["models"] = list(models)
    for table, values in (("limits", limits), ("budget", budget)):
        values = {field: value for field, value in (values or {}).items() if value is not None}
        if values:
            entry[table] = values
    if expires_at is not None:
        entry["expires_at"] = format_time(expires_at)
    if disabled:
        entry["disabled"] = True
    entry["created"] = created or format_time(int(time.time()))
    parse_entry(entry, "new key")
    return entry


def make_entry(name: str, token: str, scopes, models=None, requests_per_minute=None, concurrent_streams=None,
               tokens_per_minute=None, tokens_per_day=None, tokens_per_month=None, expires_at: float | None = None,
               disabled: bool = False) -> dict:
    """The file entry for a new key: its hash, never the key."""
    try:
        check_scopes(scopes)
    except ScopeError as error:
        raise KeyFileError(f"new key: scopes: {error}") from None
    limits = {"requests_per_minute": requests_per_minute, "concurrent_streams": concurrent_streams,
              "tokens_per_minute": tokens_per_minute}
    budget = {"tokens_per_day": tokens_per_day, "tokens_per_month": tokens_per_month}
    return entry_for(name, digest(token), scopes, models, limits, budget, expires_at, disabled)


@dataclasses.dataclass(frozen=True)
class Credential:
    """One stored hash and the key it opens; a rotated key's old hash works only `until` (Unix time)."""

    sha256: str
    key: ApiKey
    until: float | None = None


class KeyFile:
    """The keys file as a KeyRing reads it: a stamp that changes with the file, and its credentials."""

    def __init__(self, path: str):
        self.path = path

    def stamp(self):
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino

    def credentials(self) -> list[Credential]:
        return [Credential(entry["sha256"], parse_entry(entry, self.path)) for entry in read_entries(self.path)]

    def __str__(self) -> str:
        return f"Keys file {self.path}"


class KeyRing:
    """Identify a presented key: the shared API_KEY (all scopes) or a named key from the file or the database.

    `store` (security/key_store.py's KeyStore) replaces the file: any object with `stamp()` (a value that
    changes with every change of the keys), `credentials()` and the errors it raises in `errors`.
    """

    RECHECK_SECONDS = 1.0

    def __init__(self, shared_key: str = "", path: str = "", shared_scopes=frozenset({"use", "admin"}), store=None):
        self.shared_key = shared_key.encode()
        self.shared = ApiKey(SHARED_KEY_NAME, frozenset(shared_scopes))
        self.path = path
        self.store = store
        self.source = store if store is not None else (KeyFile(path) if path else None)
        self._errors = getattr(store, "errors", ()) + (KeyFileError,)
        self._credentials: list[Credential] = []
        self._stamp = _NEVER
        self._checked = 0.0
        self._lock = threading.Lock()
        if store is None and path:
            try:
                self._load(self.source.stamp())
            except KeyFileError as error:
                # gunicorn.conf.py refuses to start with a broken file; here (a worker started by a
                # SIGHUP reload, the CLI, a host app) only the shared key works until the file is fixed.
                self._stamp = self.source.stamp()
                log.error("Keys file not loaded, no named key works until it is fixed: %s", error)

    def identify(self, token: str) -> ApiKey | None:
        """Return the key `token` belongs to, or None; every stored hash is compared, in constant time."""
        self._maybe_reload()
        presented = token.encode()
        found = None
        if self.shared_key and hmac.compare_digest(presented, self.shared_key):
            found = self.shared
        hashed = digest(token).encode()
        now = time.time()
        for credential in self._credentials:
            if hmac.compare_digest(hashed, credential.sha256.encode()) and (credential.until is None
                                                                             or now < credential.until):
                found = credential.key
        return found

    def names(self) -> list[str]:
        """The named keys' names, in the store's order."""
        self._maybe_reload()
        return self._names()

    def refresh(self) -> None:
        """Look at the store again on the next request (this worker just changed it)."""
        self._checked = 0.0

    def _maybe_reload(self) -> None:
        if self.source is None:
            return
        # The database is first read on the first request (not in gunicorn's master, nor by a CLI that needs
        # no keys); until that read ends, requests wait for it rather than find no named key.
        if self._stamp is not _NEVER and time.monotonic() - self._checked < self.RECHECK_SECONDS:
            return
        with self._lock:
            if self._stamp is not _NEVER and time.monotonic() - self._checked < self.RECHECK_SECONDS:
                return
            self._checked = time.monotonic()
            first = self._stamp is _NEVER
            try:
                stamp = self.source.stamp()
                if stamp != self._stamp:
                    self._load(stamp)
                    log.info("%s %s: %d named keys", self.source, "loaded" if first else "reloaded",
                             len(self._names()))
            except self._errors as error:
                if isinstance(error, KeyFileError):
                    self._stamp = stamp  # report a broken file once, keep the last good keys
                elif first:
                    self._stamp = None  # the database will be asked again in a second
                log.error("%s not %s, the previous keys stay in force: %s", self.source,
                          "loaded" if first else "reloaded", error)

    def _names(self) -> list[str]:
        return list(dict.fromkeys(credential.key.name for credential in self._credentials))

    def _load(self, stamp) -> None:
        self._credentials, self._stamp = self.source.credentials(), stamp
        self._checked = time.monotonic()


#: A KeyRing's stamp before its first read.
_NEVER = object()


def _is_toml(path: str) -> bool:
    return path.lower().endswith(".toml")
