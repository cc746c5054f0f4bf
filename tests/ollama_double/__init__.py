"""An Ollama-compatible HTTP test server with scriptable pacing and faults (stdlib only)."""

from .server import FAULTS, SCRIPT_DEFAULTS, OllamaDouble

__all__ = ["FAULTS", "SCRIPT_DEFAULTS", "OllamaDouble"]
