"""What all the upstreams have, seen as one server: merged model lists, their health, deletes on each."""

from __future__ import annotations

from .client import ModelNotFound, OllamaError


def _answers(router, call):
    """call(upstream) on every upstream in rotation; the answers, or the first error when none answered."""
    results = router.fan_out(call)
    answered = [(upstream, value) for upstream, value in results if not isinstance(value, OllamaError)]
    if not answered:
        raise results[0][1] if results else OllamaError("No Ollama server is in rotation")
    return answered


def merged(router, path: str, field: str, key: str) -> list[dict]:
    """The entries of every upstream's list (`field` of GET `path`), each once by its `key`, in upstream order,
    each with the names of the upstreams that listed it under "upstreams"."""
    entries: dict[str, dict] = {}
    for upstream, answer in _answers(router, lambda u: u.client.fetch("GET", path, timeout=router.health_timeout)):
        for entry in answer.get(field) or []:
            if not isinstance(entry, dict):
                continue
            name = str(entry.get(key, ""))
            if name not in entries:
                entries[name] = {**entry, "upstreams": []}
            entries[name]["upstreams"].append(upstream.name)
    return list(entries.values())


def installed(router) -> list[dict]:
    """Every installed model once (Ollama's /api/tags entries), with the upstreams that have it."""
    return merged(router, "/api/tags", "models", "name")


def running(router) -> list[dict]:
    """Every loaded model once (Ollama's /api/ps entries), with the upstreams that have it loaded."""
    return merged(router, "/api/ps", "models", "name")


def lowest_version(router) -> str:
    """The oldest version among the upstreams in rotation: what a client may count on from all of them."""
    versions = [value for _, value in _answers(router, lambda u: u.client.version(router.health_timeout))]
    return min(versions, key=_version_key)


def health(router, timeout: float) -> list[dict]:
    """Each upstream's state now: asked for its version at once (bounded by `timeout`), which also feeds its circuit."""
    in_flight = router.in_flight()
    states = []
    for upstream, value in router.fan_out(lambda u: u.client.version(timeout), router.upstreams):
        up = not isinstance(value, OllamaError)
        if up:
            router.succeeded(upstream)
        elif upstream.up and not router.single:
            router.failed(upstream, "refresh")
        state = {"name": upstream.name, "status": "up" if up and upstream.up else "down",
                 "models": len(upstream.installed) if upstream.installed is not None else None,
                 "in_flight": in_flight.get(upstream.name, 0)}
        if up:
            state["version"] = value
        else:
            state["error"] = value.detail
        states.append((upstream, state))
    return states


def delete(router, model: str, upstreams) -> list[str]:
    """Delete `model` on each of `upstreams`; the names where it was deleted (ModelNotFound if on none)."""
    deleted, errors = [], []
    for upstream, value in router.fan_out(lambda u: u.client.delete(model), upstreams):
        if isinstance(value, ModelNotFound):
            continue
        if isinstance(value, OllamaError):
            errors.append(value)
        else:
            deleted.append(upstream.name)
    if errors:
        raise errors[0]
    if not deleted:
        raise ModelNotFound(f"Model {model!r} is not installed on any Ollama server")
    return deleted


def _version_key(version: str) -> tuple:
    parts = []
    for piece in str(version).split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)
