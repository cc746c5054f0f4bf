"""The gateway's blueprints: `health` (public probes), `llm` (keyed LLM routes), `admin` (usage, metrics)."""

from .admin import bp as admin_bp
from .health import bp as health_bp
from .llm import bp as llm_bp

BLUEPRINTS = (health_bp, llm_bp, admin_bp)
#: Blueprints whose requests spend a key's rate limit.
LIMITED = (llm_bp, admin_bp)
