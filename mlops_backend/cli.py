"""The gateway's `flask --app wsgi ...` commands.

`keys`: create, list and revoke named keys in KEYS_STORE (API_KEYS_FILE, or the database with
KEYS_STORE=database). A new key is printed once and only its SHA-256 is written; running workers
pick the change up within a second (they re-read the file when it changes, the database when its
version does).

`db upgrade`: apply the migrations to DATABASE_URL (the gateway also does it when it starts).

`conversations purge --older-than 30d`: delete conversations untouched for that long, and stored
Responses made before then (CONVERSATION_RETENTION_DAYS does it every hour).

`usage export --since 2026-12-01 [--until ...] [--group day|key|model] [--format csv|json]`: the daily
usage rows GET /api/usage answers, to stdout.
"""

from __future__ import annotations

import csv
import json
import time

import click
from flask.cli import with_appcontext

from .extensions import current_gateway
from .observability.usage import FIELDS as USAGE_FIELDS
from .observability.usage import GROUPS as USAGE_GROUPS
from .observability.usage import parse_day
from .security.key_store import KeyExists, KeyNotFound, KeySettingsError
from .security.keys import SCOPES, KeyFileError, make_entry, new_token, parse_time, read_entries, write_entries
from .storage import database


@click.group("db")
def db_command():
    """The gateway's database (DATABASE_URL)."""


@db_command.command("upgrade")
@with_appcontext
def db_upgrade():
    """Apply every migration the database lacks."""
    engine = database.create_engine(current_gateway().config.database_url)
    try:
        database.upgrade(engine)
        click.echo(f"{engine.url.render_as_string(hide_password=True)} is at revision {database.current(engine)}")
    finally:
        engine.dispose()


@click.group("conversations")
def conversations_command():
    """The Conversations service's stored conversations."""


@conversations_command.command("purge")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="How long untouched: a number of days (30d), hours (12h), minutes (90m) or seconds (45s).")
@with_appcontext
def purge(older_than):
    """Delete conversations untouched for longer than AGE (and stored Responses older than AGE)."""
    seconds = _age(older_than)
    counts = current_gateway().conversations.purge(seconds)
    click.echo(f"Deleted {counts['conversations']} conversations and {counts['responses']} stored responses "
               f"older than {older_than}")


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _age(text: str) -> float:
    number, unit = text[:-1], text[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1
    if unit not in _UNITS or value < 0:
        raise click.BadParameter(f"{text!r}: give a number and a unit, such as 30d, 12h, 90m or 45s",
                                 param_hint="--older-than")
    return value * _UNITS[unit]


@click.group("usage")
def usage_command():
    """Usage per key and model, per UTC day (DATABASE_URL)."""


def _day_option(context, param, value):
    if value is None:
        return None
    try:
        return parse_day(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@usage_command.command("export")
@click.option("--since", required=True, callback=_day_option, metavar="YYYY-MM-DD", help="First UTC day (included).")
@click.option("--until", callback=_day_option, metavar="YYYY-MM-DD", help="Last UTC day (included; default: the last).")
@click.option("--group", type=click.Choice([name for name in USAGE_GROUPS if name]),
              help="Sum per date (day), per date and key (key) or per date and model (model); default: neither.")
@click.option("--key", "key_name", metavar="NAME", help="Only this key's rows.")
@click.option("--format", "output", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@with_appcontext
def usage_export(since, until, group, key_name, output):
    """Write the daily usage rows from --since to --until to stdout, as GET /api/usage?since=... answers them."""
    if until is not None and since > until:
        raise click.BadParameter(f"{since} is after --until {until}", param_hint="--since")
    rows = current_gateway().usage.daily(since, until, group, key_name)
    stdout = click.get_text_stream("stdout")
    if output == "json":
        stdout.write(json.dumps({"usage": rows}, ensure_ascii=False) + "\n")
        return
    writer = csv.DictWriter(stdout, ["date", *USAGE_GROUPS[group], *USAGE_FIELDS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


@click.group("keys")
def keys_command():
    """Manage the named API keys of KEYS_STORE: API_KEYS_FILE, or the database."""


def _store():
    """The database's KeyStore with KEYS_STORE=database, else None (the keys file)."""
    return current_gateway().keys.store


def _path() -> str:
    path = current_gateway().config.api_keys_file
    if not path:
        raise click.ClickException("API_KEYS_FILE is not set: name the JSON or TOML file that holds the keys "
                                   "(or set KEYS_STORE=database)")
    return path


def _entries(path: str) -> list[dict]:
    try:
        return read_entries(path)
    except KeyFileError as error:
        raise click.ClickException(str(error)) from None


def _expiry(text: str | None) -> float | None:
    """--expires: an ISO-8601 timestamp (UTC unless it has an offset), or an age from now such as 90d."""
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        pass
    try:
        return time.time() + _age(text)
    except click.BadParameter:
        raise click.BadParameter(f"{text!r}: give an ISO-8601 time (2026-12-31T00:00:00Z) or an age (90d, 12h)",
                                 param_hint="--expires") from None


@keys_command.command("create")
@click.argument("name")
@click.option("--scope", "scopes", type=click.Choice(SCOPES), multiple=True, default=("use",), show_default=True,
              help="use: the LLM routes; admin: also model management, usage and metrics.")
@click.option("--model", "models", multiple=True, help="Allow only this model (repeat for several).")
@click.option("--rpm", type=click.IntRange(min=0), help="Requests per minute (default RATE_LIMIT_PER_MINUTE; 0: none).")
@click.option("--streams", type=click.IntRange(min=0), help="Concurrent streams (default STREAMS_PER_KEY; 0: none).")
@click.option("--tokens-per-minute", type=click.IntRange(min=0), help="Tokens per minute (default TOKENS_PER_MINUTE).")
@click.option("--tokens-per-day", type=click.IntRange(min=0), help="Tokens per UTC day (default TOKENS_PER_DAY).")
@click.option("--tokens-per-month", type=click.IntRange(min=0), help="Tokens per UTC month (default TOKENS_PER_MONTH).")
@click.option("--expires", metavar="WHEN", help="When the key stops working: an ISO-8601 time or an age (90d).")
@with_appcontext
def create(name, scopes, models, rpm, streams, tokens_per_minute, tokens_per_day, tokens_per_month, expires):
    """Create the key NAME and print it (once: only its hash is stored)."""
    settings = {"models": list(models) or None, "expires_at": _expiry(expires),
                "limits": {"requests_per_minute": rpm, "concurrent_streams": streams,
                           "tokens_per_minute": tokens_per_minute},
                "budget": {"tokens_per_day": tokens_per_day, "tokens_per_month": tokens_per_month}}
    token = new_token()
    store = _store()
    if store is not None:
        try:
            view = store.create(name, token, scopes, **settings)
        except KeyExists:
            raise click.ClickException(f"a key named {name!r} exists; revoke it first") from None
        except KeySettingsError as error:
            raise click.ClickException(str(error)) from None
        where, granted = "the database", view["scopes"]
    else:
        where = _path()
        entries = _entries(where)
        if any(entry["name"] == name for entry in entries):
            raise click.ClickException(f"a key named {name!r} exists; revoke it first")
        try:
            entry = make_entry(name, token, scopes, settings["models"], rpm, streams, tokens_per_minute,
                               tokens_per_day, tokens_per_month, settings["expires_at"])
        except KeyFileError as error:
            raise click.ClickException(str(error).replace("new key: ", "")) from None
        write_entries(where, entries + [entry])
        granted = entry["scopes"]
    click.echo(token)
    click.echo(f"Created {name!r} ({', '.join(granted)}) in {where}. This is the only time the key is shown.",
               err=True)


def _listed() -> list[dict]:
    """Every key as `keys list` shows it, from either store: the file's entries, or the database's rows."""
    store = _store()
    if store is not None:
        return [{**view, "created": view["created_at"]} for view in store.list()]
    return [{**entry, "limits": entry.get("limits", {}), "budget": entry.get("budget", {}),
             "models": entry.get("models")} for entry in _entries(_path())]


@keys_command.command("list")
@with_appcontext
def list_keys():
    """List the keys: name, scopes, models, limits, created, budget, expiry (never the keys)."""
    rows = _listed()
    if not rows:
        click.echo("no keys")
    for row in rows:
        limits, budget = row["limits"], row["budget"]

        def shown(values, field):
            return "default" if values.get(field) is None else str(values[field])

        click.echo("\t".join([
            row["name"], ",".join(row["scopes"]), "models=" + (",".join(row["models"]) if row["models"] is not None
                                                               else "*"),
            f"rpm={shown(limits, 'requests_per_minute')}", f"streams={shown(limits, 'concurrent_streams')}",
            row.get("created") or "-", f"tokens_per_minute={shown(limits, 'tokens_per_minute')}",
            f"tokens_per_day={shown(budget, 'tokens_per_day')}", f"tokens_per_month={shown(budget, 'tokens_per_month')}",
            f"expires={row.get('expires_at') or 'never'}"] + (["disabled"] if row.get("disabled") else [])))


@keys_command.command("revoke")
@click.argument("name")
@with_appcontext
def revoke(name):
    """Delete the key NAME; requests with it get 401 within a second."""
    store = _store()
    if store is not None:
        try:
            store.delete(name)
        except KeyNotFound:
            raise click.ClickException(f"no key named {name!r}") from None
    else:
        path = _path()
        entries = _entries(path)
        kept = [entry for entry in entries if entry["name"] != name]
        if len(kept) == len(entries):
            raise click.ClickException(f"no key named {name!r}")
        write_entries(path, kept)
    click.echo(f"Revoked {name!r}.", err=True)
