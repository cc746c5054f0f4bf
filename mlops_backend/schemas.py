"""Marshmallow schemas of request bodies: they validate them, and apispec documents them."""

from __future__ import annotations

import binascii
import datetime
import re

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

_DURATION = re.compile(r"^-?\d+(\.\d+)?(ns|us|µs|ms|s|m|h)?$")


class StringOrList(fields.Field):
    """A string or a list of strings (our `stop`), sent to Ollama as the list it requires.

    Ollama's Options.FromMap takes only an array for `stop`: a bare string fails there with 500.
    """

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise ValidationError("Must be a string or a list of strings.")


class FormatField(fields.Field):
    """Ollama's `format`: the string "json" or a JSON-schema object."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value == "json" or isinstance(value, dict):
            return value
        raise ValidationError('Must be "json" or a JSON-schema object.')


class KeepAliveField(fields.Field):
    """Ollama's `keep_alive`: a duration string such as "5m", or a number of seconds."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise ValidationError("Must be a duration string or a number of seconds.")
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str) and _DURATION.match(value):
            return value
        raise ValidationError('Must be a duration such as "5m", "1h", "0", or a number of seconds.')


THINK_LEVELS = ("low", "medium", "high", "max")


class ThinkField(fields.Field):
    """Ollama's `think`: a boolean, or an effort level for models that take one."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or value in THINK_LEVELS:
            return value
        raise ValidationError('Must be true, false, "low", "medium", "high" or "max".')


class StrictInteger(fields.Integer):
    """An integer that refuses floats and booleans instead of rounding them."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)


class Options(Schema):
    """Generation options, checked as Ollama documents them."""

    class Meta:
        unknown = RAISE

    error_messages = {"unknown": "Unknown option (ALLOW_UNKNOWN_OPTIONS=true passes such names through)."}

    temperature = fields.Float(validate=validate.Range(min=0), metadata={"example": 0.7})
    top_p = fields.Float(validate=validate.Range(min=0, max=1))
    top_k = StrictInteger(validate=validate.Range(min=0))
    min_p = fields.Float(validate=validate.Range(min=0, max=1))
    typical_p = fields.Float(validate=validate.Range(min=0, max=1))
    num_predict = StrictInteger(validate=validate.Range(min=-2), metadata={"example": 128})
    num_ctx = StrictInteger(validate=validate.Range(min=1))
    num_keep = StrictInteger(validate=validate.Range(min=-1))
    num_batch = StrictInteger(validate=validate.Range(min=1))
    num_gpu = StrictInteger(validate=validate.Range(min=-1))
    main_gpu = StrictInteger(validate=validate.Range(min=0))
    num_thread = StrictInteger(validate=validate.Range(min=0))
    use_mmap = fields.Boolean()
    stop = StringOrList(metadata={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
    seed = StrictInteger()
    repeat_penalty = fields.Float(validate=validate.Range(min=0))
    repeat_last_n = StrictInteger(validate=validate.Range(min=-1))
    presence_penalty = fields.Float()
    frequency_penalty = fields.Float()


class OptionsField(fields.Nested):
    """Options, checked one sent option at a time by its field of Options.

    The same checks and errors as Nested(Options) (which is what the docs show), without visiting the
    options a request does not send: a generation sends two or three of Options' nineteen, and
    marshmallow's full load visits every field (measured: 45 us of a 90 us generate body, 8 us this way).
    Options has no schema-level validators or hooks, so checking field by field is the whole load.
    """

    def __init__(self, **kwargs):
        super().__init__(Options, **kwargs)

    def _deserialize(self, value, attr, data, partial=None, **kwargs):
        schema = self.schema
        if not isinstance(value, dict):
            raise ValidationError({"_schema": [schema.error_messages["type"]]})
        loaded, errors = {}, {}
        known = schema.fields
        include = (self.unknown or schema.unknown) == INCLUDE
        for name, item in value.items():
            field = known.get(name)
            if field is None or field.dump_only:
                if include:
                    loaded[name] = item
                else:
                    errors[name] = [schema.error_messages["unknown"]]
                continue
            try:
                loaded[name] = field.deserialize(item, name, value)
            except ValidationError as error:
                errors[name] = error.messages
        if errors:
            raise ValidationError(errors, valid_data=loaded)
        return loaded


class Base64Image(fields.String):
    """An image as raw base64 text (no data: URL prefix), as Ollama takes it."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if value.startswith("data:"):
            raise ValidationError("Send the raw base64 text, without a data: URL prefix.")
        try:
            binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            raise ValidationError("Not valid base64.") from None
        return value


class LimitedRequest(Schema):
    """A request body checked against the size limits of the config (`limits` set per app)."""

    class Meta:
        unknown = RAISE

    limits = None  # the app's Config, set by request_schema()

    def check_images(self, images: list, where: str, errors: dict, total: list) -> None:
        for index, image in enumerate(images or ()):
            total[0] += len(image)
            if len(image) > self.limits.max_image_bytes:
                errors[f"{where}.{index}"] = [f"Image larger than MAX_IMAGE_BYTES ({self.limits.max_image_bytes})."]

    def check_total(self, total: int, errors: dict) -> None:
        if total > self.limits.max_images_bytes:
            errors["images"] = [f"Images add up to more than MAX_IMAGES_BYTES ({self.limits.max_images_bytes})."]

    def check_prompt(self, size: int, field: str, errors: dict) -> None:
        if size > self.limits.max_prompt_chars:
            errors[field] = [f"Prompt longer than MAX_PROMPT_CHARS ({self.limits.max_prompt_chars} characters)."]


class GenerateRequest(LimitedRequest):
    """Body of /api/llm/generate and /api/llm/stream."""

    model = fields.String(validate=validate.Length(min=1, max=256),
                          metadata={"description": "Model name; DEFAULT_MODEL when omitted", "example": "llama3.2"})
    prompt = fields.String(required=True, validate=validate.Length(min=1),
                           metadata={"example": "Why is the sky blue?"})
    system = fields.String(metadata={"description": "System prompt overriding the model's"})
    options = OptionsField()
    format = FormatField(metadata={"description": '"json" or a JSON-schema object', "oneOf": [
        {"type": "string", "enum": ["json"]}, {"type": "object"}]})
    keep_alive = KeepAliveField(metadata={"description": 'How long the model stays loaded: "5m", "0", -1 or seconds',
                                          "oneOf": [{"type": "string"}, {"type": "number"}]})
    think = ThinkField(metadata={"description": "Ask a thinking model to think (thinking text arrives apart)",
                                 "oneOf": [{"type": "boolean"}, {"type": "string", "enum": list(THINK_LEVELS)}]})
    images = fields.List(Base64Image(), metadata={"description": "Base64 images for vision models"})
    logprobs = fields.Boolean(metadata={"description": "Return each token's log probability (in `logprobs`)"})
    top_logprobs = StrictInteger(validate=validate.Range(min=0, max=20),
                                 metadata={"description": "With logprobs: the N likeliest tokens at each position"})
    truncate = fields.Boolean(metadata={"description": "Cut a prompt longer than the context instead of failing"})
    shift = fields.Boolean(metadata={"description": "Shift the context when the answer reaches its end"})
    stream = fields.Boolean(metadata={"description": "Accepted for compatibility and ignored: the route decides"})

    @validates_schema
    def _limits(self, data, **kwargs):
        errors, total = {}, [0]
        self.check_prompt(len(data.get("prompt", "")) + len(data.get("system", "")), "prompt", errors)
        self.check_images(data.get("images"), "images", errors, total)
        self.check_total(total[0], errors)
        if errors:
            raise ValidationError(errors)


class ToolFunction(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1), metadata={"example": "get_weather"})
    description = fields.String(metadata={"example": "Current weather in a city"})
    parameters = fields.Dict(metadata={"description": "JSON schema of the arguments"})


class Tool(Schema):
    """A tool the model may call (Ollama's function-tool shape)."""

    type = fields.String(required=True, validate=validate.OneOf(["function"]))
    function = fields.Nested(ToolFunction, required=True)


class ToolCallFunction(Schema):
    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True, metadata={"example": "get_weather"})
    arguments = fields.Dict(metadata={"example": {"city": "Tokyo"}})


class ToolCall(Schema):
    class Meta:
        unknown = INCLUDE

    id = fields.String(metadata={"description": "The call's id (newer Ollama); a tool result names it in "
                                                "tool_call_id", "example": "call_k3h9x2ab"})
    function = fields.Nested(ToolCallFunction, required=True)


class ChatMessage(Schema):
    """One message of the conversation."""

    role = fields.String(required=True, validate=validate.OneOf(["system", "user", "assistant", "tool"]),
                         metadata={"example": "user"})
    content = fields.String(load_default="", metadata={"example": "Why is the sky blue?"})
    images = fields.List(Base64Image())
    tool_calls = fields.List(fields.Nested(ToolCall))
    tool_name = fields.String(metadata={"description": "On role tool: which tool this result is from"})
    tool_call_id = fields.String(metadata={"description": "On role tool: the id of the call this result answers"})
    thinking = fields.String()


class ChatRequest(LimitedRequest):
    """Body of /api/llm/chat and /api/llm/chat/stream."""

    model = fields.String(validate=validate.Length(min=1, max=256),
                          metadata={"description": "Model name; DEFAULT_MODEL when omitted", "example": "llama3.2"})
    messages = fields.List(fields.Nested(ChatMessage), required=True, validate=validate.Length(min=1),
                           metadata={"example": [{"role": "system", "content": "Answer briefly."},
                                                 {"role": "user", "content": "Why is the sky blue?"}]})
    tools = fields.List(fields.Nested(Tool))
    options = OptionsField()
    format = GenerateRequest._declared_fields["format"]
    keep_alive = GenerateRequest._declared_fields["keep_alive"]
    think = GenerateRequest._declared_fields["think"]
    logprobs = GenerateRequest._declared_fields["logprobs"]
    top_logprobs = GenerateRequest._declared_fields["top_logprobs"]
    truncate = GenerateRequest._declared_fields["truncate"]
    shift = GenerateRequest._declared_fields["shift"]
    stream = fields.Boolean(metadata={"description": "Accepted for compatibility and ignored: the route decides"})
    documents = fields.List(fields.String(validate=validate.Length(min=1, max=40)), validate=validate.Length(max=20),
                            metadata={"description": "Ids of the key's documents to answer from (sent after the "
                                                     "system messages; see README, Documents)",
                                      "example": ["doc_5f0c9e1d2b3a4c5d6e7f8a9b"]})

    @validates_schema
    def _limits(self, data, **kwargs):
        errors, total = {}, [0]
        messages = data.get("messages") or []
        self.check_prompt(sum(len(m.get("content", "")) for m in messages), "messages", errors)
        for index, message in enumerate(messages):
            self.check_images(message.get("images"), f"messages.{index}.images", errors, total)
        self.check_total(total[0], errors)
        if errors:
            raise ValidationError(errors)


class ConversationCreate(Schema):
    """Body of POST /api/llm/conversations (and of PATCH, where every field is optional and null clears it)."""

    class Meta:
        unknown = RAISE

    title = fields.String(allow_none=True, validate=validate.Length(max=500), metadata={"example": "Trip to Kyoto"})
    model = fields.String(allow_none=True, validate=validate.Length(min=1, max=256),
                          metadata={"description": "The turns' model unless a turn names one (else DEFAULT_MODEL)",
                                    "example": "llama3.2"})
    system = fields.String(allow_none=True, validate=validate.Length(max=100_000),
                           metadata={"description": "System prompt, sent first in every turn",
                                     "example": "Answer briefly."})


class ConversationTurn(LimitedRequest):
    """Body of POST /api/llm/conversations/<id>/messages: the user's next message."""

    content = fields.String(required=True, validate=validate.Length(min=1),
                            metadata={"example": "And what should I see first?"})
    model = fields.String(validate=validate.Length(min=1, max=256),
                          metadata={"description": "This turn's model (else the conversation's, else DEFAULT_MODEL)"})
    options = OptionsField()
    images = fields.List(Base64Image(), metadata={"description": "Base64 images for vision models"})
    documents = ChatRequest._declared_fields["documents"]
    stream = fields.Boolean(load_default=True, metadata={
        "description": "true (default): the answer as SSE, in /api/llm/chat/stream's grammar; false: whole"})
    think = GenerateRequest._declared_fields["think"]
    keep_alive = GenerateRequest._declared_fields["keep_alive"]
    format = GenerateRequest._declared_fields["format"]

    @validates_schema
    def _limits(self, data, **kwargs):
        errors, total = {}, [0]
        self.check_prompt(len(data.get("content", "")), "content", errors)
        self.check_images(data.get("images"), "images", errors, total)
        self.check_total(total[0], errors)
        if errors:
            raise ValidationError(errors)


class EmbedRequest(Schema):
    """Body of /api/llm/embed."""

    class Meta:
        unknown = RAISE

    model = fields.String(validate=validate.Length(min=1, max=256), metadata={"example": "all-minilm"})
    input = fields.Raw(required=True, metadata={
        "description": "A text, or a list of texts (one vector each)",
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "example": ["The sky is blue.", "Grass is green."]})
    truncate = fields.Boolean(metadata={"description": "Cut inputs to the context length (Ollama's default)"})
    dimensions = StrictInteger(validate=validate.Range(min=1))
    keep_alive = GenerateRequest._declared_fields["keep_alive"]
    options = OptionsField()

    @validates_schema
    def _input(self, data, **kwargs):
        value = data.get("input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise ValidationError("Must be a non-empty string or a non-empty list of non-empty strings.", "input")
        if len(texts) > self.limits.embed_max_inputs:
            raise ValidationError(f"At most EMBED_MAX_INPUTS ({self.limits.embed_max_inputs}) texts.", "input")

    limits = None


class PullRequest(Schema):
    """Body of /api/llm/models/pull."""

    class Meta:
        unknown = RAISE

    model = fields.String(required=True, validate=validate.Length(min=1, max=256), metadata={"example": "llama3.2"})
    insecure = fields.Boolean(metadata={"description": "Allow a registry without TLS (Ollama's flag)"})


def request_schema(schema_class, config) -> Schema:
    """Return a schema instance bound to the config's limits and its unknown-option policy."""
    schema = schema_class()
    schema.limits = config
    if config.allow_unknown_options and "options" in schema.fields:
        schema.fields["options"].unknown = INCLUDE
    return schema


#: As security/keys.py has them (schemas sit below security): a key's scopes, and what a key's name may be.
KEY_SCOPES = ("use", "admin", "cloud")
KEY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RESERVED_KEY_NAMES = ("default", "anonymous")
_COUNT = {"description": "null (or absent): the gateway's default; 0: unlimited"}
_STRICT_BOOLEAN = {"truthy": {True}, "falsy": {False}}


class KeyLimits(Schema):
    """A key's rate limits: requests per minute, generations in flight, tokens per minute."""

    class Meta:
        unknown = RAISE

    requests_per_minute = StrictInteger(allow_none=True, validate=validate.Range(min=0),
                                        metadata={**_COUNT, "example": 120})
    concurrent_streams = StrictInteger(allow_none=True, validate=validate.Range(min=0),
                                       metadata={**_COUNT, "example": 4})
    tokens_per_minute = StrictInteger(allow_none=True, validate=validate.Range(min=0),
                                      metadata={**_COUNT, "example": 200000})


class KeyBudget(Schema):
    """A key's token budget (prompt + completion tokens) per UTC day and calendar month."""

    class Meta:
        unknown = RAISE

    tokens_per_day = StrictInteger(allow_none=True, validate=validate.Range(min=0),
                                   metadata={**_COUNT, "example": 5000000})
    tokens_per_month = StrictInteger(allow_none=True, validate=validate.Range(min=0),
                                     metadata={**_COUNT, "example": 100000000})


class KeyUpdate(Schema):
    """Body of PATCH /api/keys/<name>: only the fields given change (in limits and budget, only the ones given)."""

    class Meta:
        unknown = RAISE

    scopes = fields.List(fields.String(validate=validate.OneOf(KEY_SCOPES)), validate=validate.Length(min=1),
                         metadata={"description": "use, admin, cloud (cloud only beside use or admin)",
                                   "example": ["use"]})
    models = fields.List(fields.String(validate=validate.Length(min=1, max=256)), allow_none=True,
                         validate=validate.Length(min=1),
                         metadata={"description": "The models it may use; null: every model", "example": ["llama3.2"]})
    limits = fields.Nested(KeyLimits, allow_none=True, metadata={"description": "null: every limit the default"})
    budget = fields.Nested(KeyBudget, allow_none=True, metadata={"description": "null: the default budget"})
    expires_at = fields.AwareDateTime(allow_none=True, default_timezone=datetime.timezone.utc, metadata={
        "description": "ISO-8601 (UTC unless it has an offset); from then on the key gets 401. null: never",
        "example": "2026-12-31T00:00:00Z"})
    disabled = fields.Boolean(**_STRICT_BOOLEAN, metadata={"description": "true: the key gets 401 until enabled"})

    @validates_schema
    def _cloud_beside_use_or_admin(self, data, **kwargs):
        if data.get("scopes") and set(data["scopes"]) == {"cloud"}:
            raise ValidationError("cloud adds to use or admin; give one of them too.", "scopes")


class KeyCreate(KeyUpdate):
    """Body of POST /api/keys."""

    name = fields.String(required=True, validate=[
        validate.Regexp(KEY_NAME, error="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."),
        validate.NoneOf(RESERVED_KEY_NAMES, error="This name is reserved.")], metadata={"example": "web-frontend"})
    scopes = fields.List(fields.String(validate=validate.OneOf(KEY_SCOPES)), required=True,
                         validate=validate.Length(min=1), metadata=KeyUpdate._declared_fields["scopes"].metadata)


class KeyRotate(Schema):
    """Body of POST /api/keys/<name>/rotate (optional)."""

    class Meta:
        unknown = RAISE

    grace_seconds = StrictInteger(load_default=0, validate=validate.Range(min=0, max=31_536_000), metadata={
        "description": "How long the old key keeps working (at most a year); 0: it stops at once", "example": 300})
