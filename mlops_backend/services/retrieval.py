"""What of a message's documents goes into its prompt: their whole text when it fits, else the parts closest
to the question, ranked by EMBED_MODEL's embeddings (stored with the document, so each part is embedded once).

The rule, with B = DOCUMENT_CONTEXT_CHARS (default 24,000):

- **Whole.** If the named documents' texts have at most B characters together, each is sent whole, one
  system message per document in the order named: ``Document <filename> (id <id>), whole text:``, a blank
  line, then the text.
- **Parts.** Otherwise every named document is split into parts of at most 1,200 characters, cut at the
  last paragraph break, else line break, else sentence end, else space in the part's second half (else at
  1,200); each part after the first overlaps the one before by at most 150 characters: it starts at the
  first sentence, else word, that begins in the previous part's last 150 characters. The parts are
  embedded with EMBED_MODEL through the upstream's /api/embed (in batches within EMBED_MAX_INPUTS and
  EMBED_MAX_BYTES) and stored in ``document_chunks`` with the model's name, as float32; later requests
  reuse them, unless EMBED_MODEL (or the vectors' size) changed, which embeds the document again. Two
  workers embedding one document at once both answer (the second's insert conflict is ignored).
  The question is embedded, and parts are taken by cosine similarity to it, closest first (ties: earlier
  parts first), while their texts fit B together; a part that does not fit what is left is passed over
  for a smaller one. A blank question takes parts in document order (every document's first part, then
  every second part, ...). If not even the closest part fits (B smaller than a part), its first B
  characters are sent.
- The parts taken are sent as one system message per document, in the order named, the parts in document
  order: ``Document <filename> (id <id>): <n> of its <total> parts, those closest to the question, in
  document order.``, then each part after a blank line as ``[<filename>, part <p> of <total>, characters
  <start>-<end>]`` (part numbers from 1, character offsets from 0 in the document's text, end excluded)
  and its text on the next line. A document none of whose parts was taken gets no message.

B counts document text only; headings and labels come on top (about 100 characters per document and per
part). Upstream failures while embedding propagate as the upstream client's OllamaErrors.
"""

from __future__ import annotations

import re
import struct
from math import hypot
from operator import mul

import sqlalchemy as sa

from ..storage.tables import document_chunks as chunks_table
from ..upstream.client import OllamaBadResponse
from .documents import Documents

CHUNK_CHARS = 1200
OVERLAP_CHARS = 150
# Where a part may end, best first: a paragraph break, a line break, a sentence end, a space.
_BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"[.!?][\"')\]]*\s"), re.compile(r"\s"))
_SENTENCE_START = re.compile(r"[.!?][\"')\]]*\s+|\n\s*")
_WORD_START = re.compile(r"\s+")


def context_messages(gateway, key_name: str, document_ids: list[str], question: str) -> list[dict]:
    """Return the system messages that carry the key's named documents into a prompt (see the module's rule);
    DocumentNotFound for an id the key does not own."""
    documents = Documents(gateway.database).many(key_name, document_ids)
    budget = gateway.config.document_context_chars
    if sum(len(document["text"]) for document in documents) <= budget:
        return [{"role": "system", "content": f"Document {d['filename']} (id {d['id']}), whole text:\n\n{d['text']}"}
                for d in documents]
    query = embed(gateway, [question])[0] if question.strip() else None
    parts = stored_chunks(gateway, documents, None if query is None else len(query))
    taken = pick(parts, query, budget)
    return [_parts_message(document, parts[document["id"]], taken[document["id"]])
            for document in documents if taken[document["id"]]]


def split(text: str) -> list[tuple[int, str]]:
    """Cut a text into parts of at most CHUNK_CHARS characters at natural breaks, overlapping by up to
    OVERLAP_CHARS; returns (start offset, text) pairs, surrounding whitespace left out."""
    parts, start = [], _skip_space(text, 0)
    while start < len(text):
        end = len(text) if len(text) - start <= CHUNK_CHARS else _break(text, start)
        body = text[start:end].rstrip()
        if body:
            parts.append((start, body))
        if end >= len(text):
            break
        start = _next_start(text, start, end)
    return parts


def _next_start(text: str, start: int, end: int) -> int:
    """Where the part after [start, end) begins: at the first sentence, else word, of its last OVERLAP_CHARS."""
    since = max(end - OVERLAP_CHARS, start + 1)
    window = text[since:end]
    found = _SENTENCE_START.search(window) or _WORD_START.search(window)
    return _skip_space(text, since + found.end() if found else end)


def _break(text: str, start: int) -> int:
    """The end of the part starting at `start`: just after the best break in its second half, else a hard cut."""
    window = text[start + CHUNK_CHARS // 2: start + CHUNK_CHARS]
    for pattern in _BREAKS:
        found = None
        for found in pattern.finditer(window):
            pass
        if found is not None:
            return start + CHUNK_CHARS // 2 + found.end()
    return start + CHUNK_CHARS


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def embed(gateway, texts: list[str]) -> list[list[float]]:
    """Embed texts with EMBED_MODEL on the upstreams, in batches within EMBED_MAX_INPUTS and EMBED_MAX_BYTES."""
    config, model, vectors = gateway.config, gateway.config.embed_model, []
    batch, size = [], 0
    for text in texts + [None]:  # None: flush the last batch
        length = len(text.encode()) if text is not None else 0
        if batch and (text is None or len(batch) == config.embed_max_inputs or size + length > config.embed_max_bytes):
            answer = gateway.upstreams.call("/api/embed", {"model": model, "input": batch}, model=model)
            got = answer.get("embeddings")
            if not isinstance(got, list) or len(got) != len(batch) or not all(isinstance(v, list) and v for v in got):
                raise OllamaBadResponse(f"Ollama's /api/embed gave no vector for each of {len(batch)} inputs")
            vectors.extend(got)
            batch, size = [], 0
        if text is not None:
            batch.append(text)
            size += length
    return vectors


def stored_chunks(gateway, documents: list[dict], dims: int | None) -> dict[str, list[dict]]:
    """Each document's parts with their vectors: the stored ones when they were made with EMBED_MODEL (and have
    `dims` values, when given), else split, embedded and stored now."""
    model, ids = gateway.config.embed_model, [document["id"] for document in documents]
    found = {document_id: [] for document_id in ids}
    with gateway.database.engine.connect() as connection:
        for row in connection.execute(sa.select(chunks_table).where(chunks_table.c.document_id.in_(ids))
                                      .order_by(chunks_table.c.document_id, chunks_table.c.position)):
            found[row.document_id].append(dict(row._mapping))
    result = {}
    for document in documents:
        rows = found[document["id"]]
        if rows and all(row["embed_model"] == model and row["embedding"] and
                        (dims is None or len(row["embedding"]) == 4 * dims) for row in rows):
            result[document["id"]] = [{**row, "vector": _unpack(row["embedding"])} for row in rows]
        else:
            result[document["id"]] = _embed_and_store(gateway, document)
    return result


def _embed_and_store(gateway, document: dict) -> list[dict]:
    """Split a document, embed its parts and store them (replacing parts made with another model)."""
    model, parts = gateway.config.embed_model, split(document["text"])
    vectors = embed(gateway, [text for _, text in parts])
    rows = [{"document_id": document["id"], "position": position, "start": start, "text": text,
             "embed_model": model, "embedding": _pack(vector)}
            for position, ((start, text), vector) in enumerate(zip(parts, vectors))]
    if rows:
        try:
            with gateway.database.engine.begin() as connection:
                # Delete first: on SQLite that takes the write lock at once (no read-then-write upgrade to fail).
                connection.execute(chunks_table.delete().where(chunks_table.c.document_id == document["id"]))
                connection.execute(chunks_table.insert(), rows)
        except sa.exc.IntegrityError:
            # Another worker stored this document's parts first (the same parts, the same model), or the
            # document was deleted meanwhile: this request still has its own vectors, so it goes on.
            pass
    return [{**row, "vector": vector} for row, vector in zip(rows, vectors)]


def pick(parts: dict[str, list[dict]], query: list[float] | None, budget: int) -> dict[str, list[dict]]:
    """The parts to send per document (in document order): closest to `query` first, while they fit `budget`."""
    ranked = []
    for rank, chunks in enumerate(parts.values()):
        for chunk in chunks:
            score = _cosine(query, chunk["vector"]) if query is not None else 0.0
            ranked.append((-score, chunk["position"], rank, chunk))
    ranked.sort(key=lambda item: item[:3])
    taken, left = {document_id: [] for document_id in parts}, budget
    for _, _, _, chunk in ranked:
        if len(chunk["text"]) <= left:
            taken[chunk["document_id"]].append(chunk)
            left -= len(chunk["text"])
    if ranked and left == budget:  # not even the closest part fits: send its beginning
        chunk = ranked[0][3]
        taken[chunk["document_id"]].append({**chunk, "text": chunk["text"][:budget]})
    for chunks in taken.values():
        chunks.sort(key=lambda chunk: chunk["position"])
    return taken


def _parts_message(document: dict, parts: list[dict], taken: list[dict]) -> dict:
    name, total = document["filename"], len(parts)
    heading = (f"Document {name} (id {document['id']}): {len(taken)} of its {total} parts, those closest to "
               "the question, in document order.")
    labelled = [f"[{name}, part {chunk['position'] + 1} of {total}, characters {chunk['start']}-"
                f"{chunk['start'] + len(chunk['text'])}]\n{chunk['text']}" for chunk in taken]
    return {"role": "system", "content": "\n\n".join([heading, *labelled])}


def _cosine(a: list[float], b: list[float]) -> float:
    norms = hypot(*a) * hypot(*b)  # C loops: a 240,000-character document has ~270 parts of 384 values
    return sum(map(mul, a, b)) / norms if norms else 0.0


def _pack(vector: list[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)  # little-endian float32, whatever the host


def _unpack(raw: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
