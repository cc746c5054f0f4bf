"""The Conversations service's routes: a key's conversations, and each new turn answered by Ollama's
/api/chat with the stored history (services/conversations.py keeps them and builds the request)."""

from __future__ import annotations

import json
import logging

from flask import Blueprint

from ..errors import ApiError, register_error_handlers
from ..extensions import current_gateway
from ..observability import observe
from ..security.auth import authenticate
from ..services.conversations import Answer, TurnInProgress, chat_messages
from ..streaming import sse
from .common import guard, json_body, use_model
from .services import document_messages, owner, page_of, service_errors

log = logging.getLogger(__name__)

bp = Blueprint("conversations", __name__)
register_error_handlers(bp)
bp.before_request(guard)
service_errors(bp)

ROOT = "/api/llm/conversations"
TRIMMED_HEADER = "X-Trimmed-Messages"


def _fields(gateway) -> dict:
    """A conversation's fields from the body; a model named must be one the key may use."""
    fields = gateway.schemas["conversation"].load(json_body())
    if fields.get("model"):
        use_model(fields["model"])
    return fields


@bp.post(ROOT)
def create():
    """Start a conversation, owned by the key.
    ---
    tags: [conversations]
    requestBody:
      required: true
      content:
        application/json:
          schema: ConversationCreate
    responses:
      201:
        description: The conversation, with its `id`.
        content:
          application/json:
            schema: Conversation
    """
    gateway = current_gateway()
    return gateway.conversations.create(authenticate(gateway).name, **_fields(gateway)), 201


@bp.get(ROOT)
def list_conversations():
    """The key's conversations, newest first (an admin key may name another key: `?key=NAME`).
    ---
    tags: [conversations]
    parameters:
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100, default: 20}}
      - {name: cursor, in: query, schema: {type: string}, description: "`next_cursor` of the page before"}
      - {name: key, in: query, schema: {type: string}, description: "Admin keys only: another key's name"}
    responses:
      200:
        description: One page; a full page carries `next_cursor`.
        content:
          application/json:
            schema: ConversationList
    """
    return page_of("conversations", current_gateway().conversations)


@bp.get(ROOT + "/<conversation_id>")
def get(conversation_id):
    """A conversation with its messages.
    ---
    tags: [conversations]
    parameters:
      - {name: key, in: query, schema: {type: string}, description: "Admin keys only: another key's name"}
    responses:
      200:
        description: The conversation and its messages, oldest first.
        content:
          application/json:
            schema: Conversation
    """
    return current_gateway().conversations.get(owner(), conversation_id)


@bp.patch(ROOT + "/<conversation_id>")
def update(conversation_id):
    """Change a conversation's title, model or system prompt (null clears one).
    ---
    tags: [conversations]
    requestBody:
      required: true
      content:
        application/json:
          schema: ConversationCreate
    responses:
      200:
        description: The conversation as it is now.
        content:
          application/json:
            schema: Conversation
    """
    gateway = current_gateway()
    return gateway.conversations.update(authenticate(gateway).name, conversation_id, _fields(gateway))


@bp.delete(ROOT + "/<conversation_id>")
def delete(conversation_id):
    """Delete a conversation and its messages.
    ---
    tags: [conversations]
    responses:
      204: {description: Deleted.}
    """
    gateway = current_gateway()
    gateway.conversations.delete(authenticate(gateway).name, conversation_id)
    return "", 204


@bp.post(ROOT + "/<conversation_id>/messages")
def turn(conversation_id):
    """Send the next message and get the answer, streamed as SSE (default) or whole (`"stream": false`).
    ---
    tags: [conversations]
    description: |
      The user message is stored, then Ollama's /api/chat gets the system prompt, the documents,
      as much of the history as fits the model's context (oldest left out first; the count is in
      `X-Trimmed-Messages`) and the new message. The answer is stored when it ends; an answer cut
      by the client leaving or by Ollama failing is stored as far as it came, `interrupted: true`.
      A second request on the conversation while one is answered gets 409.
    requestBody:
      required: true
      content:
        application/json:
          schema: ConversationTurn
    responses:
      200:
        description: The answer, in /api/llm/chat/stream's event grammar, or whole.
        content:
          text/event-stream:
            schema: ChatStreamEvent
          application/json:
            schema: TurnResponse
      409: {description: Another request is answering in this conversation now.}
    """
    gateway = current_gateway()
    key = authenticate(gateway)
    body = gateway.schemas["turn"].load(json_body())
    conversation = gateway.conversations.get(key.name, conversation_id, with_messages=False)
    model = body.get("model") or conversation.get("model") or gateway.config.default_model
    if not model:
        raise ApiError(422, "Unprocessable Entity", "Name a model: the turn and the conversation have none, and no "
                       "DEFAULT_MODEL is configured", slug="validation-error")
    use_model(model)
    options = body.get("options") or {}
    context = options.get("num_ctx") or gateway.context_lengths(model)
    documents = document_messages(gateway, key.name, body.get("documents"), body["content"])
    user = {"role": "user", "content": body["content"], "images": body.get("images"),
            "documents": body.get("documents")}
    observation = observe.current()
    observation.on_finish.append(gateway.limits.acquire_slot(key))  # 429 here leaves the conversation as it was
    try:
        taken = gateway.conversations.begin_turn(key.name, conversation_id, user)
    except TurnInProgress:
        raise ApiError(409, "Conflict", "Another request is answering in this conversation now; send the next "
                       "message when it has ended", slug="turn-in-progress") from None
    answer = Answer(model)

    def store():
        """When the response closes, however it ended: store the answer as far as it came (a turn that failed
        before Ollama answered anything leaves no message behind)."""
        try:
            if answer.empty and answer.stats is None and (observation.status >= 400 or not observation.chunks):
                taken.finish(None, keep_user=False)
            else:
                taken.finish(answer.message())
        except Exception:
            log.exception("The answer of conversation %s could not be stored", conversation_id)

    observation.on_finish.append(store)  # whatever happens from here on gives the conversation back
    messages, trimmed = chat_messages(taken.conversation.get("system"), documents, taken.history, user, context,
                                      options)
    chat = {"model": model, "messages": messages,
            **{name: body[name] for name in ("options", "think", "keep_alive", "format") if name in body}}
    route = {"model": model, "session": conversation_id, "note": observation.served_by}
    if not body["stream"]:
        result = gateway.upstreams.call("/api/chat", chat, **route)  # a failure: store() leaves no message
        answer.add(result)
        taken.finish(answer.message())
        observation.statistics(result)
        return ({"conversation_id": conversation_id, "model": model, "message": result.get("message"),
                 **answer.stats, "trimmed": trimmed}, 200, {TRIMMED_HEADER: str(trimmed)})

    def events(obj, out):
        answer.add(obj)
        taken.renew()
        return sse.chunk_events(obj, out)

    raw = json.dumps({"stream": True, **chat}).encode()
    response = sse.stream_response(lambda: gateway.upstreams.open("POST", "/api/chat", raw, **route),
                                   gateway.config, observation, events=events, fast=None)
    response.headers[TRIMMED_HEADER] = str(trimmed)
    return response
