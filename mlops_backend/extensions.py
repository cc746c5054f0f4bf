"""The gateway's per-app state (config, Ollama client, schemas) and the extensions it binds."""

from __future__ import annotations

import dataclasses

from flask import current_app
from flask_cors import CORS

from .config import Config
from .ollama import OllamaClient
from .schemas import GenerateRequest, request_schema

KEY = "mlops_backend"
cors = CORS()


@dataclasses.dataclass
class Gateway:
    """What the views need, built once per app from the config."""

    config: Config
    ollama: OllamaClient
    generate_schema: GenerateRequest

    @classmethod
    def build(cls, config: Config) -> Gateway:
        """Create the client and schemas a config calls for."""
        return cls(config, OllamaClient.from_config(config),
                   request_schema(GenerateRequest, config.allow_unknown_options))


def current_gateway() -> Gateway:
    """Return the gateway bound to the current app."""
    return current_app.extensions[KEY]
