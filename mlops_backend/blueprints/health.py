"""Liveness and readiness probes: public, cheap, and bounded in time."""

from __future__ import annotations

from flask import Blueprint

from .. import __version__
from ..errors import problem_response, register_error_handlers
from ..extensions import current_gateway
from ..upstream.client import OllamaError

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
    """Readiness: Ollama answers its version within OLLAMA_HEALTH_TIMEOUT seconds.
    ---
    tags: [health]
    security: []
    responses:
      200:
        description: Ollama is reachable.
        content:
          application/json:
            schema: Readiness
      503:
        description: Ollama did not answer in time, or not at all.
        content:
          application/problem+json:
            schema: Problem
    """
    gateway = current_gateway()
    url = gateway.config.public_ollama_url
    try:
        version = gateway.ollama.version(gateway.config.health_timeout)
    except OllamaError as exc:
        return problem_response(503, "Ollama not ready", exc.detail, "not-ready", ollama={"url": url})
    return {"status": "healthy", "ollama": {"url": url, "version": version}}
