"""Operating the gateway: usage per key and model, in total or per day (admin scope), and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from ..observability import metrics
from ..observability.usage import GROUPS, parse_day
from ..security.auth import authenticate, require_scope
from ..errors import register_error_handlers
from ..extensions import current_gateway

bp = Blueprint("admin", __name__)
register_error_handlers(bp)

#: Any of these in the query asks for the daily rows; without them GET /api/usage answers the running totals.
PERIOD_ARGUMENTS = ("since", "until", "group")


def _day(text: str) -> None:
    try:
        parse_day(text)
    except ValueError:
        raise ValidationError("Not a date: give YYYY-MM-DD (UTC).") from None


class UsagePeriod(Schema):
    """The query of GET /api/usage by day."""

    class Meta:
        unknown = EXCLUDE

    since = fields.String(validate=_day)
    until = fields.String(validate=_day)
    group = fields.String(validate=validate.OneOf([name for name in GROUPS if name]))
    key = fields.String()

    @validates_schema
    def _in_order(self, data, **kwargs):
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ValidationError("Must not be after until.", "since")


@bp.get("/api/usage")
def usage():
    """Usage per key and model: since the database was created, or per UTC day (admin scope).
    ---
    tags: [admin]
    parameters:
      - {name: key, in: query, required: false, schema: {type: string}, description: "Only this key's rows"}
      - name: since
        in: query
        required: false
        schema: {type: string, format: date, example: "2026-12-01"}
        description: "Daily rows from this UTC date on (YYYY-MM-DD, included)"
      - name: until
        in: query
        required: false
        schema: {type: string, format: date, example: "2026-12-31"}
        description: "Daily rows up to this UTC date (YYYY-MM-DD, included; not before `since`)"
      - name: group
        in: query
        required: false
        schema: {type: string, enum: [day, key, model]}
        description: |
          Daily rows summed per date (`day`), per date and key (`key`) or per date and model (`model`);
          without it, one row per date, key and model.
    responses:
      200:
        description: |
          Without `since`, `until` and `group`: one row per key and model since the database was created
          (UsageResponse). With any of them: rows per UTC day, each with its `date`, in order of date, then
          key and model (UsageDailyResponse); days without requests have no row. Requests, prompt and
          completion tokens (Ollama's counts), errors. Each worker adds its counts every
          USAGE_FLUSH_SECONDS, so the newest requests of other workers may take that long to appear.
        content:
          application/json:
            schema:
              anyOf: [UsageResponse, UsageDailyResponse]  # `usage: []` is both
      403:
        description: The key lacks the admin scope.
      422:
        description: "`since` or `until` is not a date written YYYY-MM-DD, `since` is after `until`, or `group` is
          not day, key or model; `errors` names each one."
        content:
          application/problem+json:
            schema: Problem
    """
    gateway = current_gateway()
    require_scope(authenticate(gateway), "admin")
    wanted = request.args.get("key")
    if not any(name in request.args for name in PERIOD_ARGUMENTS):
        rows = gateway.usage.totals()
        return {"usage": [row for row in rows if wanted is None or row["key_name"] == wanted]}
    query = UsagePeriod().load(request.args.to_dict())
    return {"usage": gateway.usage.daily(query.get("since"), query.get("until"), query.get("group"), wanted)}


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
