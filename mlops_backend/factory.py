"""Build the app: a short list of named steps, each a small function."""

from __future__ import annotations

import logging
from functools import partial

from flask import Flask

from .config import PLACEHOLDER_KEY, Config
from .errors import by_path, register_error_handlers
from .observability import observe
from .extensions import KEY, Gateway, cors
from .observability.request_context import add_request_id_header, assign_request_id, configure_logging

log = logging.getLogger(__name__)

CORS_HEADERS = ["Content-Type", "Content-Encoding", "X-API-Key", "Authorization", "X-Request-ID", "X-Session-ID",
                # What the openai and anthropic SDKs send from a browser (dangerouslyAllowBrowser).
                "anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access", r"x-stainless-[a-z-]+"]
EXPOSED_HEADERS = ["X-Request-ID", "Retry-After", "WWW-Authenticate", "RateLimit-Limit", "RateLimit-Remaining",
                   "RateLimit-Reset", "X-Budget-Remaining-Minute", "X-Budget-Remaining-Day", "X-Budget-Remaining-Month",
                   "X-Trimmed-Messages", "Server-Timing"]


class GatewayFlask(Flask):
    """Flask, remembering which hooks and views are plain functions.

    Flask asks, for every hook and view of every request, whether it is a coroutine function
    (ensure_sync, which Flask documents for overriding); the answer never changes, so it is kept.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sync = {}

    def ensure_sync(self, func):
        try:
            return self._sync[func]
        except (KeyError, TypeError):  # not seen yet, or not hashable (then asked each time, as Flask does)
            pass
        made = super().ensure_sync(func)
        try:
            self._sync[func] = made
        except TypeError:
            pass
        return made


def create_app(config: Config | dict | None = None) -> Flask:
    """Create the gateway app; `config` is a Config, a mapping of variables, or None for the environment."""
    config = _as_config(config)
    app = GatewayFlask(__name__, static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=config.max_body_bytes, DEBUG=config.debug)
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    configure_logging(config.log_level, config.log_format)
    register_gateway(app, config)
    register_request_hooks(app)
    register_rate_limits(app)
    register_tracing(app)
    register_commands(app)
    register_error_handlers(app, render=by_path)
    register_cors(app, config)
    register_docs(app)
    warn_about_config(config)
    return app


def init_gateway(app: Flask, url_prefix: str = "", config: Config | dict | None = None) -> Flask:
    """Mount the gateway's routes on an existing app under `url_prefix`.

    Binds the config, the Ollama client, the key check, the error handlers and CORS to our
    routes only; the host app's own routes and error pages are left alone.
    """
    config = _as_config(config)
    register_gateway(app, config, url_prefix)
    register_request_hooks(app, scoped=True)
    register_rate_limits(app)
    register_tracing(app, scoped=True)
    prefix = url_prefix.rstrip("/")
    cors.init_app(app, resources={rf"{prefix}/{part}/*": _cors_options(config) for part in ("api", "ollama", "v1")})
    warn_about_config(config)
    return app


def _as_config(config) -> Config:
    if isinstance(config, Config):
        return config
    if config is None:
        return Config.from_env()
    return Config.from_mapping(config)


def register_gateway(app: Flask, config: Config, url_prefix: str = "") -> None:
    """Bind the gateway state and register the blueprints."""
    from .blueprints import BLUEPRINTS

    app.extensions[KEY] = Gateway.build(config)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint, url_prefix=url_prefix or None)


def register_request_hooks(app: Flask, scoped: bool = False) -> None:
    """Give requests an id and an observation (metrics, usage, log line): every request of our app,
    or only our blueprints' when mounted."""
    from .blueprints import BLUEPRINTS

    complete = partial(observe.complete, app.extensions[KEY])
    app.extensions[KEY].upstreams.on_call = observe.upstream_call  # their waits on Ollama: Server-Timing
    for key in [bp.name for bp in BLUEPRINTS] if scoped else [None]:
        # Ours run first, so even a 401 from the key check carries the id and is observed.
        app.before_request_funcs.setdefault(key, [])[0:0] = [assign_request_id, observe.begin]
        app.after_request_funcs.setdefault(key, []).extend([add_request_id_header, complete])


def register_rate_limits(app: Flask) -> None:
    """Requests per minute and concurrent streams per key (security/rate_limits.py)."""
    from .blueprints import LIMITED

    app.extensions[KEY].limits.init_app(app, LIMITED)


def register_tracing(app: Flask, scoped: bool = False) -> None:
    """Send OpenTelemetry traces over OTLP/HTTP when an endpoint is set; else import nothing of it."""
    if not app.extensions[KEY].config.tracing:
        return
    from .blueprints import BLUEPRINTS
    from .observability.tracing import init_tracing

    # After the rate limits, so its spans wrap their hooks too; gunicorn builds the app in each worker
    # (preload_app = False), so each has its own exporter thread.
    init_tracing(app, app.extensions[KEY], BLUEPRINTS, scoped)


def register_commands(app: Flask) -> None:
    """`flask keys create|list|revoke`, `flask db upgrade`, `flask conversations purge`."""
    from .cli import conversations_command, db_command, keys_command, usage_command

    app.cli.add_command(keys_command)
    app.cli.add_command(db_command)
    app.cli.add_command(conversations_command)
    app.cli.add_command(usage_command)


def register_cors(app: Flask, config: Config) -> None:
    """Answer browsers from ALLOWED_ORIGINS, and let them read our request id."""
    cors.init_app(app, **_cors_options(config))


def _cors_options(config: Config) -> dict:
    return {"origins": list(config.allowed_origins), "allow_headers": CORS_HEADERS,
            "expose_headers": EXPOSED_HEADERS, "methods": ["GET", "POST", "PATCH", "DELETE", "OPTIONS"], "max_age": 600}


def register_docs(app: Flask) -> None:
    """Serve the OpenAPI document, Swagger UI and ReDoc."""
    from .docs import init_docs

    init_docs(app)


def warn_about_config(config: Config) -> None:
    """Say loudly when the gateway runs open."""
    if not config.auth_enabled:
        log.warning("AUTH_ENABLED=false: every route is open to anyone who can reach this server")
    elif config.debug and config.api_key in ("", PLACEHOLDER_KEY):
        log.warning("DEBUG=true with no real API_KEY: never run like this where others can reach the gateway")
