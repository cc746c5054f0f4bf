"""The gateway's blueprints: `health` (public probes) and `llm` (keyed LLM routes)."""

from .health import bp as health_bp
from .llm import bp as llm_bp

BLUEPRINTS = (health_bp, llm_bp)
