"""The gateway's per-app state (config, Ollama client, schemas, keys, limits, usage) and CORS."""

from __future__ import annotations

import dataclasses

from flask import current_app
from flask_cors import CORS

from .config import Config
from .security.keys import KeyRing
from .upstream.client import OllamaClient
from .schemas import ChatRequest, EmbedRequest, GenerateRequest, PullRequest, request_schema
from .observability.usage import UsageStore

KEY = "mlops_backend"
cors = CORS()


@dataclasses.dataclass
class Gateway:
    """What the views need, built once per app from the config."""

    config: Config
    ollama: OllamaClient
    schemas: dict
    keys: KeyRing
    usage: UsageStore
    limits: object = None  # RateLimits, bound to the app by the factory

    @classmethod
    def build(cls, config: Config) -> Gateway:
        """Create the client, the request schemas (bound to the config's limits), the keys and the usage store."""
        from .security.rate_limits import RateLimits

        schemas = {name: request_schema(schema, config)
                   for name, schema in (("generate", GenerateRequest), ("chat", ChatRequest), ("embed", EmbedRequest),
                                        ("pull", PullRequest))}
        gateway = cls(config, OllamaClient.from_config(config), schemas, KeyRing(config.api_key, config.api_keys_file, config.api_key_scopes),
                      UsageStore(config.database_url, config.usage_flush_seconds))
        gateway.limits = RateLimits(gateway)
        return gateway

    def close(self) -> None:
        """Release the Ollama connections and write pending usage (tests build many apps)."""
        self.ollama.close()
        self.usage.close()
        self.limits.close()


def current_gateway() -> Gateway:
    """Return the gateway bound to the current app."""
    return current_app.extensions[KEY]
