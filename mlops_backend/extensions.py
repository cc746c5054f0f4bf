"""The gateway's per-app state (config, upstream router, schemas, keys, limits, usage, database) and CORS."""

from __future__ import annotations

import dataclasses

from flask import current_app
from flask_cors import CORS

from .config import Config
from .observability.metrics import CountedInFlight, UpstreamHooks
from .security.key_store import key_ring
from .security.keys import KeyRing
from .security.slots import InFlight, MemorySlots, slots_for
from .upstream.client import OllamaClient
from .upstream.router import NoCounter, Router
from .schemas import (ChatRequest, ConversationCreate, ConversationTurn, EmbedRequest, GenerateRequest, PullRequest,
                      request_schema)
from .observability.usage import UsageStore
from .services.conversations import Conversations
from .services.documents import Documents
from .services.model_context import ContextLengths
from .services.retention import Retention
from .storage.database import Database

KEY = "mlops_backend"
cors = CORS()


@dataclasses.dataclass
class Gateway:
    """What the views need, built once per app from the config."""

    config: Config
    upstreams: Router
    schemas: dict
    keys: KeyRing
    usage: UsageStore
    slots: object  # security.slots: generations in flight per key, and the upstreams' in-flight counts
    limits: object = None  # RateLimits, bound to the app by the factory
    database: Database = None  # DATABASE_URL for the services (conversations, documents, stored Responses)
    conversations: Conversations = None
    documents: Documents = None
    context_lengths: ContextLengths = None  # a model's context length, from /api/show
    retention: Retention | None = None  # CONVERSATION_RETENTION_DAYS's hourly purge
    budgets: object = None  # security.budgets.Budgets: tokens per minute, day and month per key
    cache: object = None  # services.cache.Cache (CACHE_URL), built on first use; False: no cache

    @classmethod
    def build(cls, config: Config) -> Gateway:
        """Create the upstream router and clients, the request schemas (bound to the config's limits), the keys,
        the limits and the usage store."""
        from .security.budgets import Budgets
        from .security.rate_limits import RateLimits

        schemas = {name: request_schema(schema, config)
                   for name, schema in (("generate", GenerateRequest), ("chat", ChatRequest), ("embed", EmbedRequest),
                                        ("pull", PullRequest), ("conversation", ConversationCreate),
                                        ("turn", ConversationTurn))}
        slots = slots_for(config.rate_limit_storage, config.slot_lease_seconds)
        # In-flight counts per upstream: per worker on memory://, shared by every worker and instance on Redis.
        counter = NoCounter() if isinstance(slots, MemorySlots) else InFlight(slots)
        router = Router(config.upstreams, lambda spec: OllamaClient.from_config(config, spec),
                        counter=CountedInFlight(counter), hooks=UpstreamHooks(),
                        refresh_seconds=config.upstream_refresh_seconds, retries=config.upstream_retries,
                        failures=config.upstream_failures, cooldown=config.upstream_cooldown_seconds,
                        health_timeout=config.health_timeout)
        database = Database(config.database_url)  # shared by the services and KEYS_STORE=database
        usage = UsageStore(config.database_url, config.usage_flush_seconds, key_labels=config.metrics_key_labels)
        gateway = cls(config, router, schemas, key_ring(config, database), usage, slots)
        gateway.limits = RateLimits(gateway)
        gateway.database = database
        gateway.conversations = Conversations(gateway.database)
        gateway.documents = Documents(gateway.database)
        gateway.context_lengths = ContextLengths(lambda model: router.fetch("POST", "/api/show", {"model": model},
                                                                            model=model))
        if config.conversation_retention_days:
            gateway.retention = Retention(gateway.conversations.purge, config.conversation_retention_days).start()
        gateway.budgets = Budgets(gateway)  # after the database: without Redis, the token windows live there
        router.start()
        return gateway

    def close(self) -> None:
        """Release the Ollama connections and write pending usage (tests build many apps)."""
        self.upstreams.close()
        self.usage.close()
        if self.retention is not None:
            self.retention.close()
        if self.budgets is not None:
            self.budgets.close()  # before the database: it writes its pending counts there
        self.database.close()
        self.slots.close()


def current_gateway() -> Gateway:
    """Return the gateway bound to the current app."""
    return current_app.extensions[KEY]
