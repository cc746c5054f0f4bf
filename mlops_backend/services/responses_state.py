"""The state Ollama's stateless /v1/responses lacks (issue 14): each answer stored per key, and a request that
names `previous_response_id` or a `conversation` rebuilt from what that key stored before it goes to Ollama.

A stored response keeps the input items its request added (a string input as one user message) and
the output items Ollama answered. A request's history is its chain, oldest first: each response's
input items, then its output items as input items Ollama reads back (`as_input`). `instructions`
are never inherited (OpenAI's rule). A conversation is the key's responses stored with that id, in
the order they were made. A stored response gets an id of the gateway's own (Ollama's are
`resp_<random below 999999>`, and collide), set with `store: true` and the client's
`previous_response_id` in what the client receives: whole answers, and every streamed event that
carries the response object. No Flask here: the blueprint maps ResponsesError to a 400.
"""

from __future__ import annotations

import json
import logging

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ..storage.tables import ID_CHARS, MODEL_CHARS
from ..storage.tables import responses as table
from . import listing

log = logging.getLogger(__name__)

#: Most responses one rebuilt request replays: a longer chain or conversation loses its oldest turns
#: (Ollama's chat would drop them anyway once they no longer fit the model's context).
MAX_CHAIN = 256
#: The streamed events whose response is final: a stream is stored when one of them passes.
FINAL_EVENTS = (b"event: response.completed", b"event: response.incomplete")
STORED_STATUSES = ("completed", "incomplete")
_RESPONSE = b'"response":{'  # in the events that carry the response object (created, in_progress, completed, ...)


class ResponsesError(ValueError):
    """A request the state cannot serve; `code` is OpenAI's error code, `message` is for the API user."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def input_items(value) -> list | None:
    """A request's `input` as a list of input items (a string is one user message); None if it is neither."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value, "type": "message"}]
    return list(value) if isinstance(value, list) else None


def as_input(item) -> dict | None:
    """An output item as the input item Ollama's openai/responses.go reads back; None for one it cannot read.

    A message becomes an assistant message whose content is its `output_text` parts' text, joined:
    what Ollama makes of either content form (it joins the parts' text unseparated), and the form the
    test double reads (it refuses content arrays, which Ollama accepts). A function call stays a function
    call (Ollama rebuilds the tool call from it); a reasoning item stays one (Ollama attaches its
    `encrypted_content`, which is its plain thinking, to the next assistant message); a web search
    call is history metadata Ollama accepts and skips.
    """
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind == "message":
        text = "".join(part.get("text") or "" for part in item.get("content") or []
                       if isinstance(part, dict) and part.get("type") == "output_text")
        return {"type": "message", "role": item.get("role") or "assistant", "content": text}
    names = {"function_call": ("id", "call_id", "name", "arguments"),
             "reasoning": ("id", "summary", "encrypted_content"),
             "web_search_call": ("id", "status", "action")}.get(kind)
    if names is None:
        return None
    return {"type": kind, **{name: item[name] for name in names if item.get(name) is not None}}


def conversation_id(value) -> str | None:
    """The id of a `conversation` parameter: a string, or an object with an `id`."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value.strip() or len(value) > 2 * ID_CHARS:
        raise ResponsesError("invalid_conversation", "conversation must be a conversation id (a string of at most "
                             f"{2 * ID_CHARS} characters) or an object with one, {{\"id\": \"...\"}}")
    return value


class ResponsesState:
    """The stored responses of every key, in the gateway's database."""

    def __init__(self, database, max_chain: int = MAX_CHAIN):
        self._database, self._max = database, max_chain

    def begin(self, key_name: str, *, input, previous_id=None, conversation=None, model=None, instructions=None,
              store: bool = True) -> Turn:
        """One request's turn: the input Ollama gets (None: the body goes unchanged) and what is stored of it."""
        if previous_id is not None and not isinstance(previous_id, str):
            raise ResponsesError("invalid_type", "previous_response_id must be a string")
        conversation = conversation_id(conversation)
        if previous_id is not None and conversation is not None:
            raise ResponsesError("mutually_exclusive_parameters", "Mutually exclusive parameters: Ensure you are "
                                 "only providing one of: 'previous_response_id' or 'conversation'.")
        items = input_items(input)
        history, latest = None, previous_id
        if previous_id is not None:
            history = self._chain(key_name, previous_id)
            if not history:
                raise ResponsesError("previous_response_not_found",
                                     f"Previous response with id '{previous_id}' not found.")
        elif conversation is not None:
            history = self._conversation(key_name, conversation)
            latest = history[-1]["id"] if history else None
        if history is not None and items is None:
            raise ResponsesError("invalid_type", "input must be a string or an array of input items")
        stored = {"previous_id": latest, "conversation": conversation, "input": items,
                  "model": model if isinstance(model, str) else None,
                  "instructions": instructions if isinstance(instructions, str) else None}
        return Turn(self, key_name, None if history is None else [*_replay(history), *items], previous_id,
                    stored if store and items is not None else None, len(items or ()))

    def save(self, key_name: str, response_id: str, *, previous_id, conversation, model, instructions, input,
             output) -> None:
        """Store one response's input items and output items."""
        row = {"id": response_id, "key_name": key_name, "previous_id": previous_id, "conversation": conversation,
               "model": model[:MODEL_CHARS] if model else None, "instructions": instructions, "input": input,
               "output": output, "created_at": listing.now()}
        with self._database.engine.begin() as connection:
            connection.execute(table.insert().values(**row))

    def _chain(self, key_name: str, response_id: str) -> list[dict]:
        """The key's response `response_id` and those before it, oldest first (at most max_chain)."""
        c = table.c
        start = sa.select(c.id, c.previous_id, c.input, c.output, sa.cast(sa.literal(1), sa.Integer).label("depth"))
        chain = start.where(c.id == response_id, c.key_name == key_name).cte("chain", recursive=True)
        step = sa.select(c.id, c.previous_id, c.input, c.output, sa.cast(chain.c.depth + 1, sa.Integer)).where(
            c.id == chain.c.previous_id, c.key_name == key_name, chain.c.depth < self._max)
        chain = chain.union_all(step)
        query = sa.select(chain.c.id, chain.c.input, chain.c.output).order_by(chain.c.depth.desc())
        with self._database.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def _conversation(self, key_name: str, conversation: str) -> list[dict]:
        """The key's responses of one conversation, oldest first (the newest max_chain)."""
        c = table.c
        query = (sa.select(c.id, c.input, c.output).where(c.key_name == key_name, c.conversation == conversation)
                 .order_by(c.created_at.desc(), c.id.desc()).limit(self._max))
        with self._database.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)][::-1]


def _replay(history: list[dict]):
    for row in history:
        yield from row["input"]
        yield from filter(None, map(as_input, row["output"]))


class Turn:
    """One request: the input to send (`input`; None sends the body unchanged) and, when its answer is to be
    stored (`id` set), what rewrites that answer: `answer` for a whole one, `records` for a stream's records."""

    def __init__(self, state: ResponsesState, key_name: str, input: list | None, asked_previous: str | None,
                 stored: dict | None, new_items: int = 0):
        self.input, self._state, self._key_name, self._new = input, state, key_name, new_items
        self._asked_previous, self._row = asked_previous, stored  # the columns save() takes, but the id and output
        self.id = listing.new_id("resp") if stored is not None else None
        self._stored = False

    def fit(self, limit: int) -> int:
        """Leave out the oldest replayed items until the rebuilt input's JSON is at most `limit` bytes (the
        request's own items always stay); returns how many were left out. A chain of stored turns is
        bounded in count, and this bounds it in bytes, as MAX_BODY_BYTES bounds a client's own body."""
        sizes = [len(json.dumps(item)) + 1 for item in self.input]
        total, start, replayed = sum(sizes), 0, len(self.input) - self._new
        while total > limit and start < replayed:
            total -= sizes[start]
            start += 1
        self.input = self.input[start:]
        return start

    def answer(self, answer: dict) -> dict:
        """A whole answer: stored if it is final, and given our id; left as Ollama wrote it if storing failed."""
        if answer.get("status") in STORED_STATUSES and self._save(answer.get("output")):
            self._stamp(answer)
        return answer

    def records(self, data: bytes) -> bytes:
        """Whole records of a stream, passed on: the response object of each event that carries one gets our
        id, and the final one is stored as it passes. Records without a response object go untouched."""
        if _RESPONSE not in data:
            return data
        records = data.split(b"\n\n")
        for index, record in enumerate(records):
            if _RESPONSE in record:
                records[index] = self._record(record)
        return b"\n\n".join(records)

    def _record(self, record: bytes) -> bytes:
        head, separator, payload = record.partition(b"\ndata: ")
        if not separator or not head.startswith(b"event: response."):
            return record
        try:
            event = json.loads(payload)
        except ValueError:
            return record
        response = event.get("response") if isinstance(event, dict) else None
        if not isinstance(response, dict):
            return record
        if head in FINAL_EVENTS and not self._stored:
            self._save(response.get("output"))  # a failure is logged; the stream already carries our id
        self._stamp(response)
        return head + separator + json.dumps(event, separators=(",", ":")).encode()

    def _stamp(self, response: dict) -> None:
        response["id"], response["store"], response["previous_response_id"] = self.id, True, self._asked_previous
        if self._row["conversation"] is not None:
            response["conversation"] = {"id": self._row["conversation"]}

    def _save(self, output) -> bool:
        if not isinstance(output, list):
            return False
        try:
            self._state.save(self._key_name, self.id, output=output, **self._row)
        except SQLAlchemyError:
            log.exception("Could not store the response %s", self.id)
            return False
        self._stored = True
        return True
