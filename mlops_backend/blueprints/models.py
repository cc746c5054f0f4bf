"""The keyed model routes: what is installed and loaded (over every upstream), details, pull and delete."""

from __future__ import annotations

import json

from flask import Blueprint, request

from ..errors import register_error_handlers
from ..extensions import current_gateway
from ..observability import observe
from ..security.auth import authenticate, require_scope
from ..streaming import sse
from ..upstream import views
from ..upstream.fanin import FanIn
from .common import guard, json_body, use_model

bp = Blueprint("models", __name__)
register_error_handlers(bp)
bp.before_request(guard)


def _upstreams():
    """The upstreams an admin call acts on: the one named by ?upstream=, else every one in rotation."""
    router = current_gateway().upstreams
    name = request.args.get("upstream")
    return [router.named(name)] if name is not None else router.in_rotation()


@bp.get("/api/llm/models")
def models():
    """List the models installed on Ollama (each once, over every upstream, with the upstreams that have it).
    ---
    tags: [llm]
    responses:
      200:
        description: Installed models, each with every field Ollama reports and `upstreams`, the names of the
          Ollama servers that have it.
        content:
          application/json:
            schema: ModelsResponse
    """
    key = authenticate(current_gateway())
    return {"models": key.visible(views.installed(current_gateway().upstreams))}


@bp.get("/api/llm/models/<path:name>")
def model_details(name):
    """Show one model: capabilities, parameters, template, details and model_info.
    ---
    tags: [models]
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}, example: "llama3.2:latest"}
    responses:
      200:
        description: Ollama's /api/show answer (from an upstream that has the model), every field kept.
        content:
          application/json:
            schema: ModelInfo
    """
    use_model(name)
    return current_gateway().upstreams.fetch("POST", "/api/show", {"model": name}, model=name,
                                              note=observe.current().served_by)


@bp.get("/api/llm/running")
def running():
    """List the models loaded in memory now (over every upstream).
    ---
    tags: [models]
    responses:
      200:
        description: Loaded models with when they unload (expires_at), their VRAM use, and `upstreams`.
        content:
          application/json:
            schema: RunningResponse
    """
    key = authenticate(current_gateway())
    return {"models": key.visible(views.running(current_gateway().upstreams))}


@bp.post("/api/llm/models/pull")
def pull_model():
    """Download a model to every Ollama server (or the one ?upstream= names), streaming progress as SSE (admin).
    ---
    tags: [models]
    parameters:
      - {name: upstream, in: query, required: false, schema: {type: string}, description: "Only this upstream"}
    requestBody:
      required: true
      content:
        application/json:
          schema: PullRequest
          example: {"model": "llama3.2"}
    responses:
      200:
        description: |
          `text/event-stream`: one `{"status", "digest"?, "total"?, "completed"?, "upstream"}` event per
          progress line of each upstream (its `{"status": "success", "upstream"}` when it is done), then
          `{"done": true, "status": "success"}` once every one succeeded, or one
          `{"error": {"title", "status", "detail"}, "done": true}` (a registry or name error arrives
          this way, after the stream has started; it stops the other pulls). `:` lines are heartbeats.
        content:
          text/event-stream:
            schema: PullEvent
      403:
        description: The key lacks the admin scope, or the model is outside its allow-list.
    """
    gateway = current_gateway()
    config = gateway.config
    require_scope(authenticate(gateway), "admin")
    body = gateway.schemas["pull"].load(json_body())
    use_model(body["model"])
    observation = observe.current()
    observation.on_finish.append(gateway.limits.acquire_slot(authenticate(gateway)))
    raw = json.dumps({"stream": True, **body}).encode()
    if gateway.upstreams.single and "upstream" not in request.args:  # one Ollama: its own stream, as it is
        return sse.stream_response(lambda: gateway.upstreams.open("POST", "/api/pull", raw), config, observation,
                                   events=sse.progress_events, fast=None)
    upstreams = _upstreams()

    def open_pulls():
        streams = [(u.name, gateway.upstreams.open("POST", "/api/pull", raw, upstream=u.name)) for u in upstreams]
        return FanIn(streams, config.sse_heartbeat_seconds, config.max_upstream_line_bytes)

    return sse.stream_response(open_pulls, config, observation, events=sse.progress_events, fast=None)


@bp.delete("/api/llm/models/<path:name>")
def delete_model(name):
    """Delete an installed model from every Ollama server that has it (or the one ?upstream= names; admin).
    ---
    tags: [models]
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}, example: "llama3.2:latest"}
      - {name: upstream, in: query, required: false, schema: {type: string}, description: "Only this upstream"}
    responses:
      204:
        description: Deleted (on at least one upstream).
      403:
        description: The key lacks the admin scope, or the model is outside its allow-list.
    """
    require_scope(authenticate(current_gateway()), "admin")
    views.delete(current_gateway().upstreams, use_model(name), _upstreams())
    return "", 204
