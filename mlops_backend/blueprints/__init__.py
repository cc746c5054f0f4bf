"""The gateway's blueprints: `health` (public probes), `llm` (keyed generations), `models` (model
lists, details, pull, delete), `admin` (usage, metrics), `keys` (named keys over HTTP, and the
calling key), the services `conversations` and `documents`, and the pass-through APIs `ollama`
(/ollama/...) and `openai` (/v1/...)."""

from .admin import bp as admin_bp
from .conversations import bp as conversations_bp
from .documents import bp as documents_bp
from .health import bp as health_bp
from .keys import bp as keys_bp
from .llm import bp as llm_bp
from .models import bp as models_bp
from .ollama_native import bp as ollama_bp
from .openai_compat import bp as openai_bp

BLUEPRINTS = (health_bp, llm_bp, models_bp, admin_bp, keys_bp, conversations_bp, documents_bp, ollama_bp,
              openai_bp)
#: Blueprints whose requests spend a key's rate limit.
LIMITED = (llm_bp, models_bp, admin_bp, keys_bp, conversations_bp, documents_bp, ollama_bp, openai_bp)
