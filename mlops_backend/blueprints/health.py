"""Liveness and readiness probes: public, cheap, and bounded in time."""

from __future__ import annotations

from flask import Blueprint

from .. import __version__
from ..errors import problem_response, register_error_handlers
from ..extensions import current_gateway
from ..security.auth import identify
from ..upstream import views

bp = Blueprint("health", __name__)
register_error_handlers(bp)


@bp.get("/health")
def liveness():
    """Liveness: the process answers; never calls Ollama.
    ---
    tags: [health]
    security: []
    responses:
      200:
        description: The gateway is up.
        content:
          application/json:
            schema: Liveness
    """
    return {"status": "ok", "version": __version__}


@bp.get("/api/llm/health")
def readiness():
    """Readiness: at least one Ollama server answers its version within OLLAMA_HEALTH_TIMEOUT seconds.
    ---
    tags: [health]
    security: []
    responses:
      200:
        description: |
          At least one upstream is up. `upstreams` lists each by name: `status` (up/down), `version`,
          `models` (how many it has installed, as last discovered), `in_flight`; with an admin key,
          also its `url` (without credentials). With one upstream, `ollama` repeats its version.
        content:
          application/json:
            schema: Readiness
      503:
        description: No upstream answered in time, or at all.
        content:
          application/problem+json:
            schema: Problem
    """
    gateway = current_gateway()
    router = gateway.upstreams
    key = identify(gateway)
    admin = key is not None and key.has_scope("admin")
    states = views.health(router, gateway.config.health_timeout)
    listed = [{**state, "url": upstream.spec.public_url} if admin else state for upstream, state in states]
    up = [state for state in listed if state["status"] == "up"]
    extra = {"upstreams": listed}
    if router.single:
        extra["ollama"] = {key: listed[0][key] for key in ("version", "url") if key in listed[0]}
    if not up:
        detail = "; ".join(f"{state['name']}: {state.get('error', 'out of rotation')}" for state in listed)
        return problem_response(503, "Ollama not ready", detail, "not-ready", **extra)
    return {"status": "healthy", **extra}
