"""An Ollama-compatible HTTP(S) test server with scriptable pacing and faults (stdlib only; tls.py, which makes
a throwaway CA and certificate for the HTTPS mode, needs trustme)."""

from .server import FAULTS, SCRIPT_DEFAULTS, OllamaDouble

__all__ = ["FAULTS", "SCRIPT_DEFAULTS", "OllamaDouble"]
