"""The Conversations service: a key's conversations and their messages, kept in the database, and the
chat request each new turn sends to Ollama.

A turn is exclusive: starting one takes the conversation's lease (`turn_until`) in one UPDATE that
succeeds only when no other turn holds it, so a second request on the conversation at once, on any
worker or instance, is refused (409) rather than answering from a history that is about to change.
The lease is given back when the turn ends, and lapses on its own if a worker dies holding it.

**Trimming.** Ollama silently cuts a prompt longer than the context, from the start, system prompt
and all. So the gateway trims first, and in the order that keeps what matters: the conversation's
system prompt, its documents and the new message are always sent; earlier messages are added from
the newest back while they fit, and the oldest ones that do not are left out. The context is
`options.num_ctx`, else the model's `context_length` from `/api/show`; room is kept for the answer
(`options.num_predict` when set, else a quarter of the context, at most 1,024 tokens). Tokens are
estimated, never counted (the tokenizer is Ollama's): a third of the UTF-8 bytes, plus 8 per message
and 768 per image, which over-counts ordinary text, so what is sent stays under the limit.
"""

from __future__ import annotations

import math

import sqlalchemy as sa

from ..storage.tables import conversations as table
from ..storage.tables import messages as messages_table
from ..storage.tables import responses as responses_table
from . import listing

#: How long a turn may hold its conversation before the lease lapses (a worker that died mid-turn).
TURN_LEASE_SECONDS = 900.0
FIELDS = ("id", "title", "model", "system", "created_at", "updated_at")
MESSAGE_FIELDS = ("role", "content", "thinking", "images", "documents", "model", "stats", "interrupted", "created_at")
EDITABLE = ("title", "model", "system")
#: The token estimate (see the module docstring).
BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8
TOKENS_PER_IMAGE = 768
ANSWER_RESERVE_MAX = 1024


class ConversationNotFound(LookupError):
    """No such conversation for this key (another key's are not found either)."""


class TurnInProgress(RuntimeError):
    """Another request is answering in this conversation now."""


class Conversations:
    def __init__(self, database):
        self._database = database

    # -- the conversation ------------------------------------------------------------------------------------

    def create(self, key_name: str, title=None, model=None, system=None) -> dict:
        created = listing.now()
        row = {"id": listing.new_id("conv"), "key_name": key_name, "title": title, "model": model, "system": system,
               "created_at": created, "updated_at": created}
        with self._database.engine.begin() as connection:
            connection.execute(table.insert().values(**row))
        return {name: row[name] for name in FIELDS}

    def page(self, key_name: str, limit: int, cursor: str | None) -> tuple[list[dict], str | None]:
        with self._database.engine.connect() as connection:
            return listing.page(connection, table, table.c.key_name == key_name, limit, cursor,
                                [table.c[name] for name in FIELDS])

    def get(self, key_name: str, conversation_id: str, with_messages: bool = True) -> dict:
        with self._database.engine.connect() as connection:
            conversation = self._row(connection, key_name, conversation_id)
            if with_messages:
                conversation["messages"] = _messages(connection, conversation_id)
        return conversation

    def update(self, key_name: str, conversation_id: str, changes: dict) -> dict:
        values = {name: changes[name] for name in EDITABLE if name in changes}
        with self._database.engine.begin() as connection:
            if values:
                values["updated_at"] = listing.now()
                updated = connection.execute(table.update().where(
                    table.c.id == conversation_id, table.c.key_name == key_name).values(**values)).rowcount
                if not updated:
                    raise ConversationNotFound(conversation_id)
            return self._row(connection, key_name, conversation_id)

    def delete(self, key_name: str, conversation_id: str) -> None:
        with self._database.engine.begin() as connection:
            connection.execute(messages_table.delete().where(messages_table.c.conversation_id.in_(
                sa.select(table.c.id).where(table.c.id == conversation_id, table.c.key_name == key_name))))
            deleted = connection.execute(table.delete().where(
                table.c.id == conversation_id, table.c.key_name == key_name)).rowcount
        if not deleted:
            raise ConversationNotFound(conversation_id)

    def purge(self, older_than_seconds: float) -> dict:
        """Delete conversations untouched (and stored Responses made) more than `older_than_seconds` ago."""
        cutoff = listing.now() - older_than_seconds
        with self._database.engine.begin() as connection:
            old = sa.select(table.c.id).where(table.c.updated_at < cutoff, table.c.turn_until.is_(None))
            connection.execute(messages_table.delete().where(messages_table.c.conversation_id.in_(old)))
            conversations = connection.execute(table.delete().where(
                table.c.updated_at < cutoff, table.c.turn_until.is_(None))).rowcount
            responses = connection.execute(responses_table.delete().where(
                responses_table.c.created_at < cutoff)).rowcount
        return {"conversations": conversations, "responses": responses}

    # -- turns -----------------------------------------------------------------------------------------------

    def begin_turn(self, key_name: str, conversation_id: str, user: dict,
                   lease: float = TURN_LEASE_SECONDS) -> Turn:
        """Take the conversation for one turn and store its user message; TurnInProgress if another holds it."""
        now = listing.now()
        with self._database.engine.begin() as connection:
            taken = connection.execute(table.update().where(
                table.c.id == conversation_id, table.c.key_name == key_name,
                sa.or_(table.c.turn_until.is_(None), table.c.turn_until < now)).values(turn_until=now + lease)).rowcount
            if not taken:
                self._row(connection, key_name, conversation_id)  # ConversationNotFound, or:
                raise TurnInProgress(conversation_id)
            conversation = self._row(connection, key_name, conversation_id)
            history = _messages(connection, conversation_id)
            position = len(history)
            connection.execute(messages_table.insert().values(
                conversation_id=conversation_id, position=position, **_message_row(user, now)))
        return Turn(self._database, conversation, history, position, lease)

    @staticmethod
    def _row(connection, key_name: str, conversation_id: str) -> dict:
        row = connection.execute(sa.select(*(table.c[name] for name in FIELDS)).where(
            table.c.id == conversation_id, table.c.key_name == key_name)).first()
        if row is None:
            raise ConversationNotFound(conversation_id)
        return dict(row._mapping)


class Turn:
    """One turn in progress: the conversation as it was, its history, and where its messages go."""

    def __init__(self, database, conversation: dict, history: list[dict], position: int, lease: float):
        self._database, self.conversation, self.history, self.position = database, conversation, history, position
        self._lease, self._renewed, self.finished = lease, listing.now(), False

    def renew(self) -> None:
        """Extend the lease of a long turn (a stream); cheap when called often: it writes at most every minute."""
        now = listing.now()
        if now - self._renewed < min(60.0, self._lease / 4) or self.finished:
            return
        self._renewed = now
        with self._database.engine.begin() as connection:
            connection.execute(table.update().where(table.c.id == self.conversation["id"]).values(
                turn_until=now + self._lease))

    def finish(self, assistant: dict | None, keep_user: bool = True) -> None:
        """Store the answer (None: there is none), give the conversation back. `keep_user=False` removes the
        turn's user message too: the turn failed before Ollama answered anything, and a retry must not leave
        the question twice."""
        if self.finished:
            return
        self.finished = True
        now = listing.now()
        conversation_id = self.conversation["id"]
        with self._database.engine.begin() as connection:
            if not keep_user:
                connection.execute(messages_table.delete().where(
                    messages_table.c.conversation_id == conversation_id, messages_table.c.position == self.position))
            elif assistant is not None:
                connection.execute(messages_table.insert().values(
                    conversation_id=conversation_id, position=self.position + 1, **_message_row(assistant, now)))
            connection.execute(table.update().where(table.c.id == conversation_id).values(
                turn_until=None, **({"updated_at": now} if keep_user else {})))


def _messages(connection, conversation_id: str) -> list[dict]:
    rows = connection.execute(sa.select(*(messages_table.c[name] for name in MESSAGE_FIELDS)).where(
        messages_table.c.conversation_id == conversation_id).order_by(messages_table.c.position))
    return [{name: value for name, value in row._mapping.items() if value is not None or name == "content"}
            for row in rows]


def _message_row(message: dict, now: float) -> dict:
    row = {name: message.get(name) for name in MESSAGE_FIELDS if name != "created_at"}
    row["interrupted"] = bool(message.get("interrupted"))
    row["created_at"] = now
    return row


# -- the request sent to Ollama ------------------------------------------------------------------------------

def estimate_tokens(message: dict) -> int:
    """A generous estimate of a message's tokens (see the module docstring)."""
    text = (message.get("content") or "") + (message.get("thinking") or "")
    return (math.ceil(len(text.encode()) / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE
            + TOKENS_PER_IMAGE * len(message.get("images") or ()))


def answer_reserve(context: int, options: dict | None) -> int:
    """Tokens kept free for the answer."""
    wanted = (options or {}).get("num_predict")
    if isinstance(wanted, int) and wanted > 0:
        return min(wanted, context // 2)
    return min(ANSWER_RESERVE_MAX, context // 4)


def chat_messages(system: str | None, documents: list[dict], history: list[dict], user: dict,
                  context: int | None, options: dict | None = None) -> tuple[list[dict], int]:
    """The messages of a turn's /api/chat request, and how many earlier messages were left out: the system
    prompt, then the documents, then as much of the history as fits (newest kept), then the new message."""
    fixed = ([{"role": "system", "content": system}] if system else []) + list(documents)
    new = [_for_ollama(user)]
    kept = [_for_ollama(message) for message in history]
    if context:
        budget = context - answer_reserve(context, options) - sum(estimate_tokens(m) for m in fixed + new)
        start = len(kept)
        while start > 0 and estimate_tokens(kept[start - 1]) <= budget:
            start -= 1
            budget -= estimate_tokens(kept[start])
        dropped, kept = start, kept[start:]
    else:
        dropped = 0
    return fixed + kept + new, dropped


def _for_ollama(message: dict) -> dict:
    """A stored message as /api/chat takes it (our own fields left out)."""
    out = {"role": message["role"], "content": message.get("content") or ""}
    for name in ("images", "thinking"):
        if message.get(name):
            out[name] = message[name]
    return out


#: Ollama's statistics of an answer, kept with the assistant message.
STATISTICS = ("done_reason", "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
              "eval_count", "eval_duration")


class Answer:
    """The assistant message of a turn, built from Ollama's /api/chat objects as they come (or from one)."""

    def __init__(self, model: str):
        self.model, self._content, self._thinking, self.stats = model, [], [], None

    def add(self, obj: dict) -> None:
        message = obj.get("message")
        if isinstance(message, dict):
            if message.get("content"):
                self._content.append(message["content"])
            if message.get("thinking"):
                self._thinking.append(message["thinking"])
        if obj.get("done"):
            self.stats = {name: obj[name] for name in STATISTICS if name in obj}

    @property
    def empty(self) -> bool:
        return not self._content and not self._thinking

    def message(self) -> dict:
        """The message to store: interrupted unless Ollama's final object came."""
        message = {"role": "assistant", "content": "".join(self._content), "model": self.model,
                   "stats": self.stats, "interrupted": self.stats is None}
        if self._thinking:
            message["thinking"] = "".join(self._thinking)
        return message
