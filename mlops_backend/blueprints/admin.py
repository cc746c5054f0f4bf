"""Operating the gateway: usage per key and model (admin scope) and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, request

from ..observability import metrics
from ..security.auth import authenticate, require_scope
from ..errors import register_error_handlers
from ..extensions import current_gateway

bp = Blueprint("admin", __name__)
register_error_handlers(bp)


@bp.get("/api/usage")
def usage():
    """Usage per key and model since the database was created (admin scope).
    ---
    tags: [admin]
    parameters:
      - {name: key, in: query, required: false, schema: {type: string}, description: "Only this key's rows"}
    responses:
      200:
        description: |
          One row per key and model: requests, prompt and completion tokens (Ollama's counts),
          errors. Each worker adds its counts every USAGE_FLUSH_SECONDS, so the newest requests
          of other workers may take that long to appear.
        content:
          application/json:
            schema: UsageResponse
      403:
        description: The key lacks the admin scope.
    """
    gateway = current_gateway()
    require_scope(authenticate(gateway), "admin")
    rows = gateway.usage.totals()
    wanted = request.args.get("key")
    return {"usage": [row for row in rows if wanted is None or row["key_name"] == wanted]}


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus metrics of every worker (an admin key, unless METRICS_PUBLIC=true).
    ---
    tags: [admin]
    responses:
      200:
        description: The Prometheus text format 0.0.4 (OpenMetrics when the Accept header asks for it).
        content:
          text/plain:
            schema: {type: string}
    """
    gateway = current_gateway()
    if not gateway.config.metrics_public:
        require_scope(authenticate(gateway), "admin")
    body, content_type = metrics.exposition(request.headers.get("Accept"))
    return body, 200, {"Content-Type": content_type, "Cache-Control": "no-store"}
