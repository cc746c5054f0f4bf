"""`flask --app wsgi keys ...`: create, list and revoke named keys in API_KEYS_FILE.

A new key is printed once and only its SHA-256 is written; running workers pick the change up
within a second (the file is re-read when it changes).
"""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from .extensions import current_gateway
from .security.keys import SCOPES, KeyFileError, make_entry, new_token, read_entries, write_entries


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
