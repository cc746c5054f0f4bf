"""Every table the gateway keeps, in one SQLAlchemy MetaData: what the migrations build, and what the
code reads and writes. A change here needs a migration in migrations/versions (see README, "Storage")."""

from __future__ import annotations

import sqlalchemy as sa

#: usage counters, one row per key and model (observability/usage.py).
#: cached_tokens: prompt and completion tokens of answers the response cache gave (services/cache.py).
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "errors", "cached_tokens")
MODEL_CHARS = 255  # the pass-through routes take any model name; a longer one is cut to fit its column
KEY_CHARS = 64
ID_CHARS = 40

metadata = sa.MetaData()

usage = sa.Table(
    "usage", metadata,
    sa.Column("key_name", sa.String(KEY_CHARS), primary_key=True),
    sa.Column("model", sa.String(MODEL_CHARS), primary_key=True),
    *(sa.Column(field, sa.BigInteger, nullable=False, default=0) for field in USAGE_FIELDS),
)

#: A conversation, owned by the key that created it. `turn_until` holds the lease of the turn being answered
#: (NULL when none): the second request on one conversation at once finds it taken and gets 409.
conversations = sa.Table(
    "conversations", metadata,
    sa.Column("id", sa.String(ID_CHARS), primary_key=True),
    sa.Column("key_name", sa.String(KEY_CHARS), nullable=False),
    sa.Column("title", sa.Text),
    sa.Column("model", sa.String(MODEL_CHARS)),
    sa.Column("system", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("turn_until", sa.Float),
    sa.Index("conversations_by_key", "key_name", "created_at", "id"),
)

#: One message of a conversation, in `position` order. `stats` holds Ollama's counts and durations (JSON).
messages = sa.Table(
    "messages", metadata,
    sa.Column("conversation_id", sa.String(ID_CHARS), sa.ForeignKey("conversations.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("thinking", sa.Text),
    sa.Column("images", sa.JSON),
    sa.Column("documents", sa.JSON),
    sa.Column("model", sa.String(MODEL_CHARS)),
    sa.Column("stats", sa.JSON),
    sa.Column("interrupted", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

#: An uploaded document's metadata and extracted text (the file itself is not kept).
documents = sa.Table(
    "documents", metadata,
    sa.Column("id", sa.String(ID_CHARS), primary_key=True),
    sa.Column("key_name", sa.String(KEY_CHARS), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("media_type", sa.String(100), nullable=False),
    sa.Column("pages", sa.Integer),
    sa.Column("characters", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("documents_by_key", "key_name", "created_at", "id"),
)

#: A document's text in chunks, each embedded once (with `embed_model`) when a prompt first needs it.
document_chunks = sa.Table(
    "document_chunks", metadata,
    sa.Column("document_id", sa.String(ID_CHARS), sa.ForeignKey("documents.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("start", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("embed_model", sa.String(MODEL_CHARS)),
    sa.Column("embedding", sa.LargeBinary),
)

#: A stored OpenAI Responses answer (store: true): the input items and output items it adds to its chain.
responses = sa.Table(
    "responses", metadata,
    sa.Column("id", sa.String(ID_CHARS * 2), primary_key=True),
    sa.Column("key_name", sa.String(KEY_CHARS), nullable=False),
    sa.Column("previous_id", sa.String(ID_CHARS * 2)),
    sa.Column("conversation", sa.String(ID_CHARS * 2)),
    sa.Column("model", sa.String(MODEL_CHARS)),
    sa.Column("instructions", sa.Text),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("output", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("responses_by_conversation", "key_name", "conversation", "created_at"),
)


#: Named keys when KEYS_STORE=database (security/key_store.py): hashed as in the keys file, never the key.
#: `previous_sha256` keeps working until `previous_until` after a rotation with grace.
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("name", sa.String(KEY_CHARS), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("previous_sha256", sa.String(64)),
    sa.Column("previous_until", sa.Float),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("models", sa.JSON),
    sa.Column("limits", sa.JSON),
    sa.Column("budget", sa.JSON),
    sa.Column("expires_at", sa.Float),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

#: One row, its `version` raised by every change to api_keys: workers poll it (about once a second) to
#: know when to reload the keys, without a database read per request.
key_store_version = sa.Table(
    "key_store_version", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

#: Usage per UTC day, key and model (beside the running totals in `usage`).
usage_daily = sa.Table(
    "usage_daily", metadata,
    sa.Column("date", sa.String(10), primary_key=True),  # YYYY-MM-DD, UTC
    sa.Column("key_name", sa.String(KEY_CHARS), primary_key=True),
    sa.Column("model", sa.String(MODEL_CHARS), primary_key=True),
    *(sa.Column(field, sa.BigInteger, nullable=False, default=0) for field in USAGE_FIELDS),
)

#: Tokens spent per key and budget window, when no Redis is configured (security/budgets.py): `window` is
#: "minute:<unix minute>", "day:YYYY-MM-DD" or "month:YYYY-MM" (UTC).
token_windows = sa.Table(
    "token_windows", metadata,
    sa.Column("key_name", sa.String(KEY_CHARS), primary_key=True),
    sa.Column("window", sa.String(24), primary_key=True),
    sa.Column("tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("expires_at", sa.Float, nullable=False),
)
