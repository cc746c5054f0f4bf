"""Marshmallow schemas of what the gateway answers: apispec turns them into the OpenAPI document."""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields, validate

from .schemas import KeyBudget, KeyLimits, ToolCall


class Statistics(Schema):
    """Timing and token counts Ollama reports at the end of a generation (durations in ns)."""

    done_reason = fields.String(metadata={"example": "stop"})
    total_duration = fields.Integer(metadata={"example": 5043500667})
    load_duration = fields.Integer(metadata={"example": 5025959})
    prompt_eval_count = fields.Integer(metadata={"example": 26})
    prompt_eval_duration = fields.Integer(metadata={"example": 18000000})
    eval_count = fields.Integer(metadata={"example": 290})
    eval_duration = fields.Integer(metadata={"example": 4709213000})


class GenerateResponse(Statistics):
    """A whole generation, with every other field Ollama sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(metadata={"example": "llama3.2"})
    response = fields.String(metadata={"example": "The sky is blue because of Rayleigh scattering."})
    thinking = fields.String(metadata={"description": "A thinking model's reasoning"})
    done = fields.Boolean(metadata={"example": True})


class AssistantMessage(Schema):
    class Meta:
        unknown = INCLUDE

    role = fields.String(metadata={"example": "assistant"})
    content = fields.String(metadata={"example": "Because of Rayleigh scattering."})
    thinking = fields.String()
    tool_calls = fields.List(fields.Nested(ToolCall))


class ChatResponse(Statistics):
    """A whole chat answer, with every other field Ollama sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(metadata={"example": "llama3.2"})
    message = fields.Nested(AssistantMessage)
    done = fields.Boolean(metadata={"example": True})


class EmbedResponse(Schema):
    """The vectors, with every other field Ollama sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(metadata={"example": "all-minilm"})
    embeddings = fields.List(fields.List(fields.Float()), metadata={"example": [[0.0101, -0.0017, 0.0304]]})
    prompt_eval_count = fields.Integer(metadata={"example": 8})


class StreamError(Schema):
    """Why a started stream ended early: the status and title it would have had as a problem."""

    class Meta:
        unknown = INCLUDE

    title = fields.String(required=True, metadata={"example": "Ollama timed out"})
    status = fields.Integer(required=True, metadata={"example": 504})
    detail = fields.String(required=True, metadata={"example": "Ollama sent nothing for 300.0 s"})


class StreamEvent(Statistics):
    """The JSON object of one event of /api/llm/stream: `{"text"}` (a piece of the answer) or
    `{"thinking"}` (a piece of the reasoning), either may carry `logprobs`; then the final event,
    `{"done": true, ...}` with every statistic Ollama sent, or `{"error": {...}, "done": true}`.
    Other fields may appear."""

    class Meta:
        unknown = INCLUDE

    text = fields.String(metadata={"description": "A piece of the answer", "example": "The"})
    thinking = fields.String(metadata={"description": "A piece of a thinking model's reasoning"})
    logprobs = fields.List(fields.Dict(), metadata={
        "description": "Ollama's log probabilities of the piece's tokens, when the request asked for them"})
    done = fields.Boolean(metadata={"description": "True on the final event (statistics or error)"})
    error = fields.Nested(StreamError, metadata={"description": "Why a started stream ended early"})


class ChatStreamEvent(StreamEvent):
    """The JSON object of one event of /api/llm/chat/stream: the events of /api/llm/stream, and
    `{"tool_calls": [...]}` when the model calls tools. Other fields may appear."""

    class Meta:
        unknown = INCLUDE

    tool_calls = fields.List(fields.Nested(ToolCall), metadata={
        "description": "Tools the model calls (each call as Ollama sent it, with its `id` where it has one)"})


class ModelDetails(Schema):
    class Meta:
        unknown = INCLUDE

    parent_model = fields.String()
    format = fields.String(metadata={"example": "gguf"})
    family = fields.String(metadata={"example": "llama"})
    families = fields.List(fields.String())
    parameter_size = fields.String(metadata={"example": "3.2B"})
    quantization_level = fields.String(metadata={"example": "Q4_K_M"})


class Model(Schema):
    """One installed model, with every field Ollama sent."""

    class Meta:
        unknown = INCLUDE

    name = fields.String(metadata={"example": "llama3.2:latest"})
    model = fields.String(metadata={"example": "llama3.2:latest"})
    modified_at = fields.String(metadata={"example": "2025-05-04T17:37:44.706015396-07:00"})
    size = fields.Integer(metadata={"example": 2019393189})
    digest = fields.String(metadata={"example": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"})
    details = fields.Nested(ModelDetails)
    upstreams = fields.List(fields.String(), metadata={"description": "The Ollama servers that have it (by name)",
                                                       "example": ["gpu-1", "gpu-2"]})


class ModelsResponse(Schema):
    models = fields.List(fields.Nested(Model))


class ModelInfo(Schema):
    """What Ollama's /api/show reports about a model (every field it sends is kept)."""

    class Meta:
        unknown = INCLUDE

    capabilities = fields.List(fields.String(), metadata={"example": ["completion", "tools"]})
    parameters = fields.String(metadata={"example": "stop \"<|eot_id|>\""})
    template = fields.String()
    details = fields.Nested(ModelDetails)
    model_info = fields.Dict(metadata={"example": {"general.architecture": "llama", "llama.context_length": 131072}})
    modified_at = fields.String()


class RunningModel(Model):
    expires_at = fields.String(metadata={"example": "2024-06-04T14:38:31.83753-07:00"})
    size_vram = fields.Integer(metadata={"example": 5137025024})
    context_length = fields.Integer(metadata={"example": 4096})


class RunningResponse(Schema):
    models = fields.List(fields.Nested(RunningModel))


class Liveness(Schema):
    status = fields.String(metadata={"example": "ok"})
    version = fields.String(metadata={"example": "0.1.0"})


class OllamaInfo(Schema):
    url = fields.String(metadata={"description": "Only for an admin key", "example": "http://localhost:11434"})
    version = fields.String(metadata={"example": "0.33.0"})


class UpstreamState(Schema):
    """One Ollama server behind the gateway, as the readiness probe found it."""

    name = fields.String(metadata={"example": "gpu-1"})
    status = fields.String(validate=validate.OneOf(["up", "down"]), metadata={"example": "up"})
    version = fields.String(metadata={"example": "0.33.0"})
    models = fields.Integer(allow_none=True, metadata={"description": "Installed models, as last discovered (null "
                                                                      "with one upstream: nothing is discovered)"})
    in_flight = fields.Integer(metadata={"example": 2})
    url = fields.String(metadata={"description": "Only for an admin key; never with credentials"})
    error = fields.String(metadata={"description": "Why it is down"})


class Readiness(Schema):
    status = fields.String(metadata={"example": "healthy"})
    upstreams = fields.List(fields.Nested(UpstreamState))
    ollama = fields.Nested(OllamaInfo, metadata={"description": "With one upstream: its version (and URL, for admin)"})


class FieldError(Schema):
    field = fields.String(metadata={"example": "options.temperature"})
    message = fields.String(metadata={"example": "Must be greater than or equal to 0."})


class Problem(Schema):
    """RFC 9457 problem details: the body of every error (a problem may carry extension members)."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(metadata={"example": "urn:mlops-backend:problem:validation-error"})
    title = fields.String(metadata={"example": "Invalid request body"})
    status = fields.Integer(metadata={"example": 422})
    detail = fields.String(metadata={"example": "Invalid fields: options.temperature"})
    request_id = fields.String(metadata={"example": "6f1c0a6e1f7c4d0f9d1c2b3a4e5f6a7b"})
    errors = fields.List(fields.Nested(FieldError), metadata={"description": "One entry per bad field (422 only)"})


class PullEvent(Schema):
    """The JSON object of one event of /api/llm/models/pull: `{"status", "digest"?, "total"?, "completed"?}`
    per progress line, then `{"done": true, "status": "success"}` or `{"error": {...}, "done": true}`.
    Other fields may appear."""

    class Meta:
        unknown = INCLUDE

    status = fields.String(metadata={"example": "pulling dde5aa3fc5ff"})
    digest = fields.String(metadata={"example": "sha256:dde5aa3fc5ff"})
    total = fields.Integer(metadata={"description": "Bytes in this layer", "example": 2019377376})
    completed = fields.Integer(metadata={"description": "Bytes of this layer downloaded so far"})
    done = fields.Boolean(metadata={"description": "True on the final event (success or error)"})
    error = fields.Nested(StreamError, metadata={"description": "Why the pull failed"})


class UsageCounts(Schema):
    """The counts of a usage row (storage.tables.USAGE_FIELDS), running totals and daily rows alike."""

    requests = fields.Integer()
    prompt_tokens = fields.Integer(metadata={"description": "Sum of Ollama's prompt_eval_count"})
    completion_tokens = fields.Integer(metadata={"description": "Sum of Ollama's eval_count"})
    errors = fields.Integer(metadata={"description": "Requests answered with 4xx/5xx or ended by an error event"})
    cached_tokens = fields.Integer(metadata={"description": "Prompt and completion tokens of answers the response "
                                                            "cache gave (X-Cache: HIT); not in the two sums above"})


class UsageRow(UsageCounts):
    key_name = fields.String(metadata={"example": "web-frontend"})
    model = fields.String(metadata={"description": "Empty for requests that name no model (lists, refusals)",
                                    "example": "llama3.2"})


class UsageResponse(Schema):
    usage = fields.List(fields.Nested(UsageRow))


class StoredMessage(Schema):
    """One message of a conversation, as stored."""

    role = fields.String(metadata={"example": "assistant"})
    content = fields.String(metadata={"example": "Kiyomizu-dera, early, before the crowds."})
    thinking = fields.String(metadata={"description": "A thinking model's reasoning"})
    images = fields.List(fields.String())
    documents = fields.List(fields.String(), metadata={"description": "Documents the user message named"})
    model = fields.String(metadata={"description": "The model that answered (assistant messages)"})
    stats = fields.Dict(metadata={"description": "Ollama's statistics of the answer (done_reason, eval_count, ...)"})
    interrupted = fields.Boolean(metadata={"description": "True when the answer was cut: the client left or "
                                                          "Ollama failed mid-way; the text is what came"})
    created_at = fields.Float(metadata={"description": "Unix time"})


class Conversation(Schema):
    id = fields.String(metadata={"example": "conv_5f0c9e1d2b3a4c5d6e7f8a9b"})
    title = fields.String(allow_none=True)
    model = fields.String(allow_none=True)
    system = fields.String(allow_none=True)
    created_at = fields.Float()
    updated_at = fields.Float()
    messages = fields.List(fields.Nested(StoredMessage), metadata={"description": "On GET of one conversation"})


class ConversationList(Schema):
    conversations = fields.List(fields.Nested(Conversation), metadata={"description": "Newest first"})
    next_cursor = fields.String(metadata={"description": "Present when the page is full: pass as ?cursor="})


class TurnResponse(Statistics):
    """A conversation turn's whole answer (`"stream": false`)."""

    conversation_id = fields.String()
    model = fields.String()
    message = fields.Nested(AssistantMessage)
    trimmed = fields.Integer(metadata={"description": "Earlier messages left out to fit the context"})


class Document(Schema):
    id = fields.String(metadata={"example": "doc_5f0c9e1d2b3a4c5d6e7f8a9b"})
    filename = fields.String(metadata={"example": "handbook.pdf"})
    media_type = fields.String(metadata={"example": "application/pdf"})
    pages = fields.Integer(allow_none=True, metadata={"description": "PDF only"})
    characters = fields.Integer(metadata={"description": "Length of the extracted text"})
    created_at = fields.Float()
    text = fields.String(metadata={"description": "The extracted text (GET of one document, unless ?text=false)"})


class DocumentList(Schema):
    documents = fields.List(fields.Nested(Document), metadata={"description": "Newest first"})
    next_cursor = fields.String(metadata={"description": "Present when the page is full: pass as ?cursor="})


class UsageDailyRow(UsageCounts):
    """Usage of one UTC day: per key and model, or summed as `group` says (GET /api/usage?since=...)."""

    date = fields.String(metadata={"description": "The UTC day, YYYY-MM-DD", "example": "2026-12-01"})
    key_name = fields.String(metadata={"description": "Absent with group=day and group=model",
                                       "example": "web-frontend"})
    model = fields.String(metadata={"description": "Absent with group=day and group=key; empty for requests that "
                                                   "name no model", "example": "llama3.2:latest"})


class UsageDailyResponse(Schema):
    usage = fields.List(fields.Nested(UsageDailyRow), metadata={"description": "In order of date, then key and model"})


class ApiKeyInfo(Schema):
    """A named key's settings and state, as an admin sees them: never the key, nor its hash."""

    name = fields.String(metadata={"example": "web-frontend"})
    scopes = fields.List(fields.String(), metadata={"example": ["use"]})
    models = fields.List(fields.String(), allow_none=True, metadata={"description": "null: every model"})
    limits = fields.Nested(KeyLimits, metadata={"description": "Its own limits; null: the gateway's default"})
    budget = fields.Nested(KeyBudget, metadata={"description": "Its own budget; null: the gateway's default"})
    expires_at = fields.DateTime(allow_none=True, metadata={"description": "null: never"})
    expired = fields.Boolean(metadata={"description": "The expiry has passed: the key gets 401"})
    disabled = fields.Boolean(metadata={"description": "Disabled by an admin: the key gets 401"})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    rotation_grace_until = fields.DateTime(allow_none=True, metadata={
        "description": "After a rotation with grace: until when the previous key still works; else null"})


class ApiKeyList(Schema):
    keys = fields.List(fields.Nested(ApiKeyInfo), metadata={"description": "Oldest first"})


class CreatedApiKey(ApiKeyInfo):
    """A key just created or rotated: the only answer that ever holds the key."""

    key = fields.String(metadata={"description": "The key: store it now, it is never shown again",
                                  "example": "mlk_3q0Jc9..."})


class OwnApiKey(Schema):
    """The calling key as it applies now: its limits and budget in force (0: unlimited), and what it has left."""

    name = fields.String(metadata={"example": "web-frontend"})
    scopes = fields.List(fields.String(), metadata={"example": ["use"]})
    models = fields.List(fields.String(), allow_none=True, metadata={"description": "null: every model"})
    limits = fields.Nested(KeyLimits, metadata={"description": "In force: its own, else the gateway's default"})
    budget = fields.Nested(KeyBudget, metadata={"description": "In force: its own, else the gateway's default"})
    expires_at = fields.DateTime(allow_none=True, metadata={"description": "null: never"})
    remaining = fields.Dict(keys=fields.String(), values=fields.Integer(allow_none=True), metadata={
        "description": "Tokens left per budget window (minute, day, month); null: unlimited",
        "example": {"minute": 199000, "day": 4980000, "month": None}})
