"""Named keys in the database (KEYS_STORE=database): the same settings as the keys file, hashed the same way.

Every change raises `key_store_version.version` in its own transaction, so each worker of each instance
polls one small row (at most once a second, security/keys.py's KeyRing) and reads all the keys again only
when it moved: a change is in force everywhere within about a second, with no database read per request.
"""

from __future__ import annotations

import re
import time

import sqlalchemy as sa

from ..storage.database import Database
from ..storage.tables import api_keys, key_store_version
from .keys import (BUDGET_FIELDS, LIMIT_FIELDS, SCOPES, ApiKey, Credential, KeyFileError, KeyRing, digest, entry_for,
                   format_time)

_VERSION_ROW = 1
#: What entry_for's messages start with, which means nothing to a caller of the store.
_WHERE = re.compile(r"^new key(?: \([^)]*\))?: ")


class KeyNotFound(LookupError):
    """No key has that name."""


class KeyExists(ValueError):
    """A key with that name exists."""


class KeySettingsError(ValueError):
    """Settings the keys file would refuse too (a reserved name, scopes that cannot be granted, ...)."""


class KeyStore:
    """The api_keys table: create, read, change, rotate and revoke keys; the KeyRing's source of credentials."""

    #: What a KeyRing logs and survives while polling (the database is down: the loaded keys stay in force).
    errors = (sa.exc.SQLAlchemyError,)

    def __init__(self, database: Database):
        self.database = database
        self._version_row = False

    def __str__(self) -> str:
        return "Keys in the database"

    # -- for the KeyRing --------------------------------------------------------------------------------------

    def stamp(self) -> int | None:
        """The store's version: it changes with every change of a key."""
        with self.database.engine.connect() as connection:
            return _version(connection)

    def credentials(self) -> list[Credential]:
        """Every key's hash, and the old hash of a key rotated with grace (valid until its end)."""
        found = []
        for row in self._rows():
            key = _key(row)
            found.append(Credential(row.sha256, key))
            if row.previous_sha256 and row.previous_until is not None:
                found.append(Credential(row.previous_sha256, key, row.previous_until))
        return found

    # -- for the API and the CLI ------------------------------------------------------------------------------

    def list(self) -> list[dict]:
        """Every key's settings and state (never a key or a hash), oldest first."""
        return [_view(row) for row in self._rows()]

    def get(self, name: str) -> dict:
        with self.database.engine.connect() as connection:
            return _view(self._row(connection, name))

    def create(self, name: str, token: str, scopes, models=None, limits=None, budget=None,
               expires_at: float | None = None, disabled: bool = False) -> dict:
        """Store the key `token` (its hash) under `name`; raise KeyExists or KeySettingsError."""
        _check(name, digest(token), scopes, models, limits, budget, expires_at, disabled)
        now = time.time()
        row = {"name": name, "sha256": digest(token), "previous_sha256": None, "previous_until": None,
               "scopes": _scopes(scopes), "models": list(models) if models is not None else None,
               "limits": _counts(limits, LIMIT_FIELDS), "budget": _counts(budget, BUDGET_FIELDS),
               "expires_at": expires_at, "disabled": bool(disabled), "created_at": now, "updated_at": now}
        self._ensure_version_row()
        try:
            with self.database.engine.begin() as connection:
                if connection.execute(sa.select(api_keys.c.name).where(api_keys.c.name == name)).first():
                    raise KeyExists(name)
                connection.execute(api_keys.insert().values(**row))
                self._bump(connection)
        except sa.exc.IntegrityError:  # another instance created it in the meantime
            raise KeyExists(name) from None
        return _view(_Plain(row))

    def update(self, name: str, changes: dict) -> dict:
        """Change some of scopes, models, limits and budget (field by field; None: the default), expires_at,
        disabled."""
        self._ensure_version_row()
        with self.database.engine.begin() as connection:
            row = self._row(connection, name, lock=True)
            merged = {"scopes": row.scopes, "models": row.models, "limits": dict(row.limits or {}),
                      "budget": dict(row.budget or {}), "expires_at": row.expires_at, "disabled": row.disabled}
            for field, value in changes.items():
                if field in ("limits", "budget"):  # field by field; null: all of them the default
                    merged[field] = {**merged[field], **value} if value is not None else {}
                else:
                    merged[field] = value
            merged["limits"] = _counts(merged["limits"], LIMIT_FIELDS)
            merged["budget"] = _counts(merged["budget"], BUDGET_FIELDS)
            merged["scopes"] = _scopes(merged["scopes"])
            _check(name, row.sha256, **merged)
            merged["updated_at"] = time.time()
            connection.execute(api_keys.update().where(api_keys.c.name == name).values(**merged))
            self._bump(connection)
            return _view(self._row(connection, name))

    def rotate(self, name: str, token: str, grace_seconds: float = 0) -> dict:
        """Replace the key's hash by `token`'s; the old key keeps working for `grace_seconds` (0: not at all)."""
        self._ensure_version_row()
        with self.database.engine.begin() as connection:
            row = self._row(connection, name, lock=True)
            now = time.time()
            connection.execute(api_keys.update().where(api_keys.c.name == name).values(
                sha256=digest(token), previous_sha256=row.sha256 if grace_seconds > 0 else None,
                previous_until=now + grace_seconds if grace_seconds > 0 else None, updated_at=now))
            self._bump(connection)
            return _view(self._row(connection, name))

    def delete(self, name: str) -> None:
        """Revoke the key: requests with it get 401 within about a second."""
        self._ensure_version_row()
        with self.database.engine.begin() as connection:
            if connection.execute(api_keys.delete().where(api_keys.c.name == name)).rowcount == 0:
                raise KeyNotFound(name)
            self._bump(connection)

    # -- the table --------------------------------------------------------------------------------------------

    def _rows(self) -> list:
        with self.database.engine.connect() as connection:
            return connection.execute(sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.name)).all()

    @staticmethod
    def _row(connection, name: str, lock: bool = False):
        query = sa.select(api_keys).where(api_keys.c.name == name)
        row = connection.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise KeyNotFound(name)
        return row

    @staticmethod
    def _bump(connection) -> None:
        # In the change's own transaction: a worker that sees the new version also sees the change. On
        # PostgreSQL the row lock also orders concurrent changes.
        connection.execute(key_store_version.update().where(key_store_version.c.id == _VERSION_ROW)
                           .values(version=key_store_version.c.version + 1))

    def _ensure_version_row(self) -> None:
        """Create the version row (once, outside a change, so two first changes never race to insert it)."""
        if self._version_row:
            return
        try:
            with self.database.engine.begin() as connection:
                if _version(connection) is None:
                    connection.execute(key_store_version.insert().values(id=_VERSION_ROW, version=0))
        except sa.exc.IntegrityError:
            pass  # another worker inserted it first
        self._version_row = True


def key_ring(config, database: Database) -> KeyRing:
    """The gateway's KeyRing: the shared key, and the named keys of KEYS_STORE (the file or the database)."""
    if config.keys_store == "database":
        return KeyRing(config.api_key, "", config.api_key_scopes, store=KeyStore(database))
    return KeyRing(config.api_key, config.api_keys_file, config.api_key_scopes)


class _Plain:
    """A dict read like a row."""

    def __init__(self, values: dict):
        self.__dict__.update(values)


def _version(connection) -> int | None:
    return connection.execute(sa.select(key_store_version.c.version)
                              .where(key_store_version.c.id == _VERSION_ROW)).scalar()


def _check(name, sha256, scopes, models, limits, budget, expires_at, disabled) -> None:
    try:
        entry_for(name, sha256, scopes, models, limits, budget, expires_at, disabled)
    except KeyFileError as error:
        raise KeySettingsError(_WHERE.sub("", str(error))) from None


def _scopes(scopes) -> list:
    return sorted(set(scopes), key=lambda scope: SCOPES.index(scope) if scope in SCOPES else len(SCOPES))


def _counts(values: dict | None, names: tuple) -> dict | None:
    kept = {field: values[field] for field in names if (values or {}).get(field) is not None}
    return kept or None


def _key(row) -> ApiKey:
    limits, budget = row.limits or {}, row.budget or {}
    return ApiKey(row.name, frozenset(row.scopes), tuple(row.models) if row.models is not None else None,
                  **{field: limits.get(field) for field in LIMIT_FIELDS},
                  **{field: budget.get(field) for field in BUDGET_FIELDS},
                  expires_at=row.expires_at, disabled=bool(row.disabled))


def _view(row) -> dict:
    """A key's settings and state as the API shows them: never the key, nor its hash."""
    key, now = _key(row), time.time()
    grace = row.previous_until if row.previous_sha256 and row.previous_until and row.previous_until > now else None
    return {"name": key.name, "scopes": _scopes(key.scopes), "models": list(key.models) if key.models is not None
            else None, "limits": key.limits, "budget": key.budget, "expires_at": format_time(key.expires_at),
            "expired": key.expired(now), "disabled": key.disabled, "created_at": format_time(row.created_at),
            "updated_at": format_time(row.updated_at), "rotation_grace_until": format_time(grace)}
