"""The gateway's `flask --app wsgi ...` commands.

`keys`: create, list and revoke named keys in API_KEYS_FILE. A new key is printed once and only
its SHA-256 is written; running workers pick the change up within a second (the file is re-read
when it changes).

`db upgrade`: apply the migrations to DATABASE_URL (the gateway also does it when it starts).

`conversations purge --older-than 30d`: delete conversations untouched for that long, and stored
Responses made before then (CONVERSATION_RETENTION_DAYS does it every hour).
"""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from .extensions import current_gateway
from .security.keys import SCOPES, KeyFileError, make_entry, new_token, read_entries, write_entries
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


@click.group("keys")
def keys_command():
    """Manage the named API keys in API_KEYS_FILE."""


def _path() -> str:
    path = current_gateway().config.api_keys_file
    if not path:
        raise click.ClickException("API_KEYS_FILE is not set: name the JSON or TOML file that holds the keys")
    return path


def _entries(path: str) -> list[dict]:
    try:
        return read_entries(path)
    except KeyFileError as error:
        raise click.ClickException(str(error)) from None


@keys_command.command("create")
@click.argument("name")
@click.option("--scope", "scopes", type=click.Choice(SCOPES), multiple=True, default=("use",), show_default=True,
              help="use: the LLM routes; admin: also model management, usage and metrics.")
@click.option("--model", "models", multiple=True, help="Allow only this model (repeat for several).")
@click.option("--rpm", type=click.IntRange(min=0), help="Requests per minute (default RATE_LIMIT_PER_MINUTE; 0: none).")
@click.option("--streams", type=click.IntRange(min=0), help="Concurrent streams (default STREAMS_PER_KEY; 0: none).")
@with_appcontext
def create(name, scopes, models, rpm, streams):
    """Create the key NAME and print it (once: only its hash is stored)."""
    path = _path()
    entries = _entries(path)
    if any(entry["name"] == name for entry in entries):
        raise click.ClickException(f"a key named {name!r} exists; revoke it first")
    token = new_token()
    try:
        entry = make_entry(name, token, scopes, models, rpm, streams)
    except KeyFileError as error:
        raise click.ClickException(str(error).replace("new key: ", "")) from None
    write_entries(path, entries + [entry])
    click.echo(token)
    click.echo(f"Created {name!r} ({', '.join(entry['scopes'])}) in {path}. This is the only time the key is "
               "shown.", err=True)


@keys_command.command("list")
@with_appcontext
def list_keys():
    """List the keys: name, scopes, models, limits, created (never the keys)."""
    entries = _entries(_path())
    if not entries:
        click.echo("no keys")
    for entry in entries:
        limits = entry.get("limits", {})
        click.echo("\t".join([
            entry["name"], ",".join(entry["scopes"]), "models=" + (",".join(entry["models"]) if "models" in entry
                                                                    else "*"),
            f"rpm={limits.get('requests_per_minute', 'default')}", f"streams={limits.get('concurrent_streams', 'default')}",
            entry.get("created", "-")]))


@keys_command.command("revoke")
@click.argument("name")
@with_appcontext
def revoke(name):
    """Delete the key NAME; requests with it get 401 within a second."""
    path = _path()
    entries = _entries(path)
    kept = [entry for entry in entries if entry["name"] != name]
    if len(kept) == len(entries):
        raise click.ClickException(f"no key named {name!r}")
    write_entries(path, kept)
    click.echo(f"Revoked {name!r}.", err=True)
