"""Named API keys: stored only as SHA-256 hashes in a JSON or TOML file, each with scopes and limits.

The file is re-read when it changes (checked at most once a second), so `keys create` and
`keys revoke` take effect without a restart; a file that fails to parse leaves the last good
keys in force.
"""

from __future__ import annotations

import dataclasses
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
    allowed: frozenset | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        # The allow-list in canonical form, so every spelling Ollama reads as one model matches alike.
        if self.models is not None:
            object.__setattr__(self, "allowed", frozenset(canonical(model) for model in self.models))

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


def parse_entry(entry, where: str) -> ApiKey:
    """Check one entry of the file and return the key it describes."""
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: not an object")
    unknown = set(entry) - {"name", "sha256", "scopes", "models", "limits", "created"}
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
    limits = entry.get("limits", {})
    if not isinstance(limits, dict) or set(limits) - {"requests_per_minute", "concurrent_streams"}:
        raise KeyFileError(f"{where} ({name}): limits may hold requests_per_minute and concurrent_streams")
    for field, value in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise KeyFileError(f"{where} ({name}): limits.{field} must be an integer >= 0 (0: unlimited)")
    return ApiKey(name, frozenset(scopes), tuple(models) if models is not None else None,
                  limits.get("requests_per_minute"), limits.get("concurrent_streams"))


def make_entry(name: str, token: str, scopes, models=None, requests_per_minute=None, concurrent_streams=None) -> dict:
    """The file entry for a new key: its hash, never the key."""
    try:
        check_scopes(scopes)
    except ScopeError as error:
        raise KeyFileError(f"new key: scopes: {error}") from None
    entry = {"name": name, "sha256": digest(token), "scopes": sorted(set(scopes), key=SCOPES.index)}
    if models:
        entry["models"] = list(models)
    limits = {field: value for field, value in (("requests_per_minute", requests_per_minute),
                                                 ("concurrent_streams", concurrent_streams)) if value is not None}
    if limits:
        entry["limits"] = limits
    entry["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    parse_entry(entry, "new key")
    return entry


class KeyRing:
    """Identify a presented key: the shared API_KEY (all scopes) or a named key from the file."""

    RECHECK_SECONDS = 1.0

    def __init__(self, shared_key: str = "", path: str = "", shared_scopes=frozenset({"use", "admin"})):
        self.shared_key = shared_key.encode()
        self.shared = ApiKey(SHARED_KEY_NAME, frozenset(shared_scopes))
        self.path = path
        self._keys: list[tuple[bytes, ApiKey]] = []
        self._stamp = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if path:
            try:
                self._load(self._file_stamp())
            except KeyFileError as error:
                # gunicorn.conf.py refuses to start with a broken file; here (a worker started by a
                # SIGHUP reload, the CLI, a host app) only the shared key works until the file is fixed.
                self._stamp = self._file_stamp()
                log.error("Keys file not loaded, no named key works until it is fixed: %s", error)

    def identify(self, token: str) -> ApiKey | None:
        """Return the key `token` belongs to, or None; every stored hash is compared, in constant time."""
        self._maybe_reload()
        presented = token.encode()
        found = None
        if self.shared_key and hmac.compare_digest(presented, self.shared_key):
            found = self.shared
        hashed = digest(token).encode()
        for stored, key in self._keys:
            if hmac.compare_digest(hashed, stored):
                found = key
        return found

    def names(self) -> list[str]:
        self._maybe_reload()
        return [key.name for _, key in self._keys]

    def _file_stamp(self):
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino

    def _maybe_reload(self) -> None:
        if not self.path or time.monotonic() - self._checked < self.RECHECK_SECONDS:
            return
        with self._lock:
            self._checked = time.monotonic()
            stamp = self._file_stamp()
            if stamp != self._stamp:
                try:
                    self._load(stamp)
                    log.info("Keys file %s reloaded: %d named keys", self.path, len(self._keys))
                except KeyFileError as error:
                    self._stamp = stamp  # report a broken file once, keep the last good keys
                    log.error("Keys file not reloaded, the previous keys stay in force: %s", error)

    def _load(self, stamp) -> None:
        keys = [(entry["sha256"].encode(), parse_entry(entry, self.path)) for entry in read_entries(self.path)]
        self._keys, self._stamp = keys, stamp
        self._checked = time.monotonic()


def _is_toml(path: str) -> bool:
    return path.lower().endswith(".toml")
