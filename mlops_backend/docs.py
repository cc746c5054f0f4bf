"""Build the OpenAPI document from the views' docstrings and the marshmallow schemas; serve the UIs.

`/openapi.json` is OpenAPI 3.2, the first version that can describe an event stream item by item
(`itemSchema`); `/openapi.json?openapi=3.0` is the same document as OpenAPI 3.0.3, for the Swagger UI
flasgger bundles (3.28, which renders nothing but 3.0.x), and `/docs` loads that one.
"""

from __future__ import annotations

import inspect
import os
import re

import yaml
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flasgger import Swagger
from flask import Blueprint, current_app, has_request_context, render_template_string, request, send_file, url_for
from marshmallow import Schema

from . import __version__, responses, schemas


from .errors import ApiError

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
REDOC_JS = os.path.join(STATIC_DIR, "redoc", "redoc.standalone.js")
EXTENSION_KEY = "mlops_backend.openapi"
#: The document's version, and the one of the rendition for flasgger's Swagger UI (`?openapi=3.0`).
OPENAPI_VERSION = "3.2.0"
SWAGGER_UI_OPENAPI_VERSION = "3.0.3"
EVENT_STREAM = "text/event-stream"

DESCRIPTION = """An authenticated gateway in front of an Ollama server.

Send the API key in `X-API-Key` (or `Authorization: Bearer <key>`). Keys have scopes: `use` for
the LLM routes, `admin` also for model management, usage and metrics. Every error of the
gateway's own routes is `application/problem+json` (RFC 9457); the pass-through routes (`/ollama/`,
`/v1/`) answer in their API's own error shape. Streams are Server-Sent Events; see `POST /api/llm/stream`.
Responses of keyed routes carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`."""

KEYED_ERRORS = {"401": "Missing or wrong API key", "403": "The key lacks the scope, or the model is outside its allow-list",
                "429": "Over the key's requests per minute or concurrent streams (Retry-After, RateLimit-* headers)"}
BODY_ERRORS = {"400": "Malformed JSON or a body that is not a JSON object", "413": "Body over MAX_BODY_BYTES",
               "422": "A field is invalid; `errors` names each one"}
OLLAMA_ERRORS = {"404": "Unknown model", "502": "Ollama failed or answered badly",
                 "503": "Ollama unreachable, or busy (with Retry-After)", "504": "Ollama timed out"}

#: The pass-through APIs' tags, described.
TAGS = {
    "ollama": "Ollama's own API under `/ollama/`, as ollama-python, ollama-js, LangChain and Open WebUI call it "
              "(set their base URL or `OLLAMA_HOST` to `<gateway>/ollama`). Errors are `{\"error\": \"...\"}`.",
    "openai": "OpenAI-compatible routes, relayed to Ollama's /v1 layer. Each one also answers under Ollama's base "
              "URL, at `/ollama/v1/...`, as Ollama serves it. Errors are OpenAI's `{\"error\": {...}}`.",
    "anthropic": "Anthropic's Messages API (`ANTHROPIC_BASE_URL=<gateway>`, for the anthropic SDKs and Claude Code), "
                 "also at `/ollama/v1/messages`. Errors are `{\"type\": \"error\", \"error\": {...}}`.",
}
#: The docstrings of views we do not write (flasgger's): summary line, then YAML after `---`.
DOCSTRINGS = {"flasgger.openapi": """The OpenAPI document: OpenAPI 3.2, or 3.0.3 with `?openapi=3.0`.
---
parameters:
  - name: openapi
    in: query
    required: false
    schema: {type: string, enum: ["3.0"]}
    description: "`3.0`: the same document as OpenAPI 3.0.3 (what /docs reads), event streams described less exactly"
responses:
  200:
    description: The document.
    content:
      application/json:
        schema: {type: object}
"""}

bp = Blueprint("docs", __name__)


class GatewaySwagger(Swagger):
    """Flasgger's Swagger UI, fed the apispec document instead of flasgger's own parse."""

    def get_apispecs(self, endpoint="openapi"):
        if request.args.get("openapi") == "3.0":
            return openapi_document(current_app, SWAGGER_UI_OPENAPI_VERSION)
        return openapi_document(current_app)


def _swagger_ui_reads_3_0(endpoint: str, values: dict) -> None:
    """Point the Swagger UI page (and only it) at the 3.0.3 rendition: url_for("flasgger.openapi")
    gains `?openapi=3.0` there, so a SCRIPT_NAME prefix still applies."""
    if endpoint == "flasgger.openapi" and has_request_context() and request.endpoint == "flasgger.apidocs":
        values.setdefault("openapi", "3.0")


def init_docs(app) -> None:
    """Register /openapi.json, Swagger UI at /docs and ReDoc at /redoc."""
    app.register_blueprint(bp)
    app.url_defaults(_swagger_ui_reads_3_0)
    GatewaySwagger(app, merge=True, config={
        "specs": [{"endpoint": "openapi", "route": "/openapi.json"}],
        "specs_route": "/docs/",
        "title": "mlops-backend API",
        "openapi": SWAGGER_UI_OPENAPI_VERSION,
        "static_url_path": "/docs/static",
        "uiversion": 3,
        "hide_top_bar": True,
        "ui_params": {"persistAuthorization": True},
        # flasgger's page writes this into its script as is: without it, `let auth_config = None;` throws
        # a ReferenceError there (and window.ui is never set).
        "auth": {},
    })


def openapi_document(app, version: str = OPENAPI_VERSION) -> dict:
    """Return the OpenAPI document for every route of `app` (OPENAPI_VERSION or SWAGGER_UI_OPENAPI_VERSION),
    built once per app and version."""
    built = app.extensions.setdefault(EXTENSION_KEY, {})
    if version not in built:
        built[version] = _build(app, version)
    return built[version]


def _build(app, version: str = OPENAPI_VERSION) -> dict:
    spec = APISpec(title="mlops-backend", version=__version__, openapi_version=version,
                   plugins=[MarshmallowPlugin()], info={"description": DESCRIPTION})
    spec.components.security_scheme("ApiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    spec.components.security_scheme("BearerAuth", {"type": "http", "scheme": "bearer"})
    for name, description in TAGS.items():
        spec.tag({"name": name, "description": description})
    for module in (schemas, responses):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            # Nested schemas are registered by the plugin as it meets them: skip those.
            if issubclass(cls, Schema) and cls.__module__ == module.__name__ and name not in spec.components.schemas:
                spec.components.schema(name, schema=cls)
    paths = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        operation = _operation(app.view_functions[rule.endpoint], rule)
        if rule.rule.startswith("/ollama/v1/"):  # the /v1 operation again, under Ollama's base URL
            operation["operationId"] += "_under_ollama"
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        for method in methods:
            one = dict(operation)
            if len(methods) > 1:  # one view for several methods: each operation needs its own id
                one["operationId"] = f"{operation['operationId']}_{method.lower()}"
            paths.setdefault(path, {})[method.lower()] = one
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    document["security"] = [{"ApiKeyAuth": []}, {"BearerAuth": []}]
    if not version.startswith("3.0."):  # 3.2: each event of a stream, its data the JSON of the YAML's schema
        for operation in (op for methods in document["paths"].values() for op in methods.values()):
            for response in operation["responses"].values():
                media = response.get("content", {}).get(EVENT_STREAM)
                if media and "schema" in media:
                    media["itemSchema"] = _event(media.pop("schema"))
    return document


def _event(data_schema: dict) -> dict:
    """One Server-Sent Event as OpenAPI 3.2 models it (the fields a client's SSE parser gives it), whose
    `data` is the JSON text of an object `data_schema` describes.

    In a view's YAML, the `schema` of `text/event-stream` names that object; the 3.0.3 rendition keeps it
    there, as 3.0 has no way to say more.
    """
    return {
        "type": "object",
        "description": "One event: a single `data:` line holding one JSON object, then a blank line. The gateway "
                       "sets no `event`, `id` or `retry`, and its heartbeats (`: keep-alive` comment lines) are "
                       "not events.",
        "required": ["data"],
        "properties": {
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data_schema},
            "event": {"type": "string", "description": "Always the default, `message`"},
        },
    }


def _operation(view, rule) -> dict:
    """Read a view's docstring: summary line, then YAML after `---`; add the errors it can give."""
    doc = DOCSTRINGS.get(rule.endpoint) or inspect.getdoc(view) or rule.endpoint
    summary, _, rest = doc.partition("\n")
    yaml_text = rest.split("---", 1)[1] if "---" in rest else ""
    operation = yaml.safe_load(yaml_text) or {}
    operation.setdefault("summary", summary.strip())
    operation.setdefault("operationId", rule.endpoint.replace(".", "_"))
    responses = operation.setdefault("responses", {"200": {"description": "OK"}})
    keyed = ("llm.", "models.", "admin.", "keys.", "conversations.", "documents.", "ollama.", "openai.")
    public = operation.get("security") == [] or not rule.endpoint.startswith(keyed)
    if public:
        operation["security"] = []
        operation.setdefault("tags", ["docs"])
    errors = {} if public else dict(KEYED_ERRORS)
    if not public and "POST" in rule.methods:
        errors.update(BODY_ERRORS)
    if rule.endpoint.startswith(("llm.", "models.", "conversations.turn")):
        errors.update(OLLAMA_ERRORS)
    for code, text in errors.items():
        responses.setdefault(code, _problem(text))
    responses = {str(code): value for code, value in responses.items()}
    operation["responses"] = responses
    declared = {parameter["name"] for parameter in operation.get("parameters", [])}
    for name in sorted(rule.arguments - declared):
        operation.setdefault("parameters", []).append(
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
    return operation


def _problem(description: str) -> dict:
    return {"description": description, "content": {"application/problem+json": {"schema": {
        "$ref": "#/components/schemas/Problem"}}}}


REDOC_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>mlops-backend API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>{% if have_js %}<redoc spec-url="{{ spec_url }}"></redoc>
<script src="{{ js_url }}"></script>{% else %}
<p>ReDoc's bundle is not installed: run <code>scripts/fetch-redoc.sh</code>. The document is at
<a href="{{ spec_url }}">{{ spec_url }}</a> and Swagger UI at <a href="{{ docs_url }}">{{ docs_url }}</a>.</p>{% endif %}
</body></html>"""


@bp.get("/redoc")
def redoc():
    """ReDoc, served with its bundle from this server (no internet needed)."""
    return render_template_string(REDOC_PAGE, have_js=os.path.isfile(REDOC_JS), spec_url=url_for("flasgger.openapi"),
                                  js_url=url_for("docs.redoc_js"), docs_url=url_for("flasgger.apidocs"))


@bp.get("/redoc/redoc.standalone.js")
def redoc_js():
    """ReDoc's standalone bundle (from the npm package redoc); 404 where it is not installed."""
    try:
        return send_file(REDOC_JS, mimetype="text/javascript", max_age=86400)
    except FileNotFoundError:
        raise ApiError(404, "Not Found", "ReDoc's bundle is not installed on this server "
                       "(scripts/fetch-redoc.sh fetches it)", slug="not-found") from None

