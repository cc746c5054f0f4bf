"""The Ollama servers the gateway fronts: one URL, a list of URLs, or a TOML file of named upstreams."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from urllib.parse import urlsplit, urlunsplit

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
FIELDS = {"name", "url", "weight", "max_parallel", "models", "ca_bundle"}


class UpstreamsError(ValueError):
    """An upstream the gateway cannot use; the message names it."""


@dataclasses.dataclass(frozen=True)
class UpstreamSpec:
    """One Ollama server: its name (what logs, metrics and the health route show), URL and how to share it."""

    name: str
    url: str
    weight: float = 1.0
    max_parallel: int = 4  # Ollama's OLLAMA_NUM_PARALLEL on that box
    models: tuple | None = None  # a static list: only these models are sent there
    ca_bundle: str | None = None

    @property
    def public_url(self) -> str:
        """The URL without user:password, for admin keys (never for anyone else)."""
        parts = urlsplit(self.url)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def check_url(url: str, where: str) -> str:
    """An http(s) URL with a host and a valid port, trailing slashes removed."""
    value = url.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamsError(f"{where}: {url!r} is not an http(s) URL such as http://localhost:11434")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise UpstreamsError(f"{where}: {url!r} has an invalid port") from None
    return value


def from_urls(raw: str, where: str) -> tuple[UpstreamSpec, ...]:
    """OLLAMA_BASE_URLS: URLs separated by commas (or Open WebUI's semicolons), named host:port."""
    urls = [check_url(item, where) for item in re.split(r"[;,]", raw) if item.strip()]
    if not urls:
        raise UpstreamsError(f"{where}: no URL given")
    specs = tuple(UpstreamSpec(_default_name(url), url) for url in urls)
    return _unique(specs, where)


def from_file(path: str) -> tuple[UpstreamSpec, ...]:
    """OLLAMA_UPSTREAMS_FILE: one [[upstreams]] table each; a bad entry is named in the error."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UpstreamsError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamsError(f"{path}: not valid TOML: {exc}") from None
    entries = data.get("upstreams")
    if not isinstance(entries, list) or not entries:
        raise UpstreamsError(f"{path}: expected one or more [[upstreams]] tables")
    specs = tuple(_entry(entry, f"{path}: upstreams[{index}]", os.path.dirname(os.path.abspath(path)))
                  for index, entry in enumerate(entries))
    return _unique(specs, path)


def _entry(entry, where: str, base: str) -> UpstreamSpec:
    if not isinstance(entry, dict):
        raise UpstreamsError(f"{where}: not a table")
    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise UpstreamsError(f"{where}: unknown fields {unknown} (known: {', '.join(sorted(FIELDS))})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UpstreamsError(f"{where}: name must be 1-64 letters, digits, '.', '_', ':' or '-'")
    where = f"{where} ({name})"
    if not isinstance(entry.get("url"), str):
        raise UpstreamsError(f"{where}: url is required")
    url = check_url(entry["url"], where)
    weight = entry.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise UpstreamsError(f"{where}: weight must be a number above 0")
    parallel = entry.get("max_parallel", 4)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise UpstreamsError(f"{where}: max_parallel must be an integer of at least 1")
    models = entry.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)):
        raise UpstreamsError(f"{where}: models must be a list of model names")
    ca_bundle = entry.get("ca_bundle")
    if ca_bundle is not None:
        if not isinstance(ca_bundle, str) or not ca_bundle:
            raise UpstreamsError(f"{where}: ca_bundle must be the path of a PEM file")
        ca_bundle = os.path.join(base, ca_bundle)
        if not os.path.isfile(ca_bundle):
            raise UpstreamsError(f"{where}: ca_bundle {ca_bundle!r} is not a file")
        if not url.startswith("https://"):
            raise UpstreamsError(f"{where}: ca_bundle is for an https:// url")
    return UpstreamSpec(name, url, float(weight), parallel, tuple(models) if models is not None else None, ca_bundle)


def _default_name(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _unique(specs: tuple, where: str) -> tuple:
    names, urls = set(), set()
    for spec in specs:
        if spec.name in names:
            raise UpstreamsError(f"{where}: the name {spec.name!r} appears twice")
        if spec.url in urls:
            raise UpstreamsError(f"{where}: the URL of {spec.name!r} appears twice")
        names.add(spec.name)
        urls.add(spec.url)
    return specs
