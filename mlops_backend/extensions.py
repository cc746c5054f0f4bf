"""The gateway's per-app state (config, Ollama client, schemas) and the extensions it binds."""

from __future__ import annotations

import dataclasses

from flask import current_app
from flask_cors import CORS

from .config import Config
from .ollama import OllamaClient
from .schemas import ChatRequest, EmbedRequest, GenerateRequest, request_schema

KEY = "mlops_backend"
cors = CORS()


@dataclasses.dataclass
class Gateway:
    """What the views need, built once per app from the config."""

    config: Config
    ollama: OllamaClient
    schemas: dict

    @classmethod
    def build(cls, config: Config) -> Gateway:
        """Create the client and the request schemas (bound to the config's limits)."""
        schemas = {name: request_schema(schema, config)
                   for name, schema in (("generate", GenerateRequest), ("chat", ChatRequest), ("embed", EmbedRequest))}
        return cls(config, OllamaClient.from_config(config), schemas)


def current_gateway() -> Gateway:
    """Return the gateway bound to the current app."""
    return current_app.extensions[KEY]
