"""services/retrieval.py: documents sent whole when they fit DOCUMENT_CONTEXT_CHARS, else their parts closest to
the question, embedded once through the Ollama double's /api/embed and stored, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import re
import threading

import pytest
import sqlalchemy as sa

from mlops_backend.config import Config
from mlops_backend.extensions import Gateway
from mlops_backend.services import retrieval
from mlops_backend.services.documents import DocumentNotFound, Documents
from mlops_backend.services.extract import Extracted
from mlops_backend.storage.tables import document_chunks
from mlops_backend.upstream.client import OllamaError
from tests.support import API_KEY

NEEDLE = "The secret launch code of the Zorbian fleet is 7432, kept in the lighthouse vault."
QUESTION = "What is the secret launch code of the Zorbian fleet?"
LABEL = re.compile(r"^\[(?P<name>[^,\]]+), part (?P<part>\d+) of (?P<total>\d+), "
                   r"characters (?P<start>\d+)-(?P<end>\d+)\]$", re.M)
FILLER_WORDS = ("river stone garden window copper meadow lantern harbor orchard thunder pebble velvet canyon "
                "marble willow ember falcon glacier saffron tundra quarry bramble citadel ferry harvest island "
                "juniper kettle ledger mosaic nectar oyster prairie quill ribbon summit tapestry umber valley "
                "wagon yarrow zephyr anchor bellow candle drift echo fjord grove hollow inlet jasper knoll").split()


@pytest.fixture
def build(double, tmp_path):
    """Build Gateways on the double and a SQLite file of this test (or `url`); all are closed afterwards."""
    built = []

    def make(url: str | None = None, **env) -> Gateway:
        settings = {"API_KEY": API_KEY, "OLLAMA_BASE_URL": double.url,
                    "DATABASE_URL": url or f"sqlite:///{tmp_path}/gateway.db",
                    **{name: str(value) for name, value in env.items()}}
        gateway = Gateway.build(Config.from_mapping(settings))
        built.append(gateway)
        return gateway

    yield make
    for gateway in built:
        gateway.close()


def filler(chars: int, seed: int) -> str:
    """Paragraphs of plain sentences, about `chars` long, that share no word with NEEDLE or QUESTION."""
    rng, paragraphs, size = random.Random(seed), [], 0
    while size < chars:
        sentences = [" ".join(rng.choice(FILLER_WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "."
                     for _ in range(rng.randint(3, 7))]
        paragraphs.append(" ".join(sentences))
        size += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs)


def add(gateway, text: str, filename: str = "report.txt", key: str = "alice") -> str:
    return Documents(gateway.database).add(key, filename, Extracted(text, "text/plain"))["id"]


def embed_inputs(double) -> list[list[str]]:
    return [request["body"]["input"] for request in double.requests if request["path"] == "/api/embed"]


def parts_of(message: dict) -> list[dict]:
    """The labelled parts of a message: label fields and the text under each label."""
    content, labels = message["content"], list(LABEL.finditer(message["content"]))
    return [{**{k: (v if k == "name" else int(v)) for k, v in label.groupdict().items()},
             "text": content[label.end() + 1: labels[i + 1].start() - 2 if i + 1 < len(labels) else len(content)]}
            for i, label in enumerate(labels)]


def stored(gateway, document_id: str) -> list:
    with gateway.database.engine.connect() as connection:
        return list(connection.execute(sa.select(document_chunks).where(document_chunks.c.document_id == document_id)
                                       .order_by(document_chunks.c.position)))


def test_documents_that_fit_are_sent_whole_in_the_order_named(build, double):
    gateway = build()
    first = add(gateway, "Quarterly revenue rose 12%.\n\nCosts fell.", "q3.pdf")
    second = add(gateway, "The board meets on Tuesday.", "minutes.txt")
    messages = retrieval.context_messages(gateway, "alice", [second, first], "When does the board meet?")
    assert messages == [
        {"role": "system",
         "content": f"Document minutes.txt (id {second}), whole text:\n\nThe board meets on Tuesday."},
        {"role": "system", "content": f"Document q3.pdf (id {first}), whole text:\n\nQuarterly revenue rose 12%.\n\n"
                                      "Costs fell."}]
    assert embed_inputs(double) == [] and stored(gateway, first) == []


def test_a_document_ten_times_the_budget_sends_the_part_that_answers(build, double):
    budget = 4000
    gateway = build(DOCUMENT_CONTEXT_CHARS=budget)
    text = filler(5 * budget, 1) + "\n\n" + NEEDLE + "\n\n" + filler(5 * budget, 2)
    document_id = add(gateway, text)
    messages = retrieval.context_messages(gateway, "alice", [document_id], QUESTION)
    assert len(messages) == 1 and messages[0]["role"] == "system"
    parts, total = parts_of(messages[0]), len(retrieval.split(text))
    heading = f"Document report.txt (id {document_id}): {len(parts)} of its {total} parts, those closest"
    assert messages[0]["content"].startswith(heading)
    assert any(NEEDLE in part["text"] for part in parts)
    assert sum(len(part["text"]) for part in parts) <= budget < sum(len(part["text"]) for part in parts) + 1200
    assert len(messages[0]["content"]) <= budget + 100 * (len(parts) + 1)
    assert [part["part"] for part in parts] == sorted(part["part"] for part in parts)
    for part in parts:  # each label says where its text is in the document
        assert (part["name"], part["total"]) == ("report.txt", total)
        assert text[part["start"]:part["end"]] == part["text"]
    # The question, then one batch of every part.
    assert embed_inputs(double) == [[QUESTION], [chunk for _, chunk in retrieval.split(text)]]


def test_parts_are_embedded_once_and_stored_with_the_model(build, double):
    gateway = build(DOCUMENT_CONTEXT_CHARS=2000)
    text = filler(20000, 3) + "\n\n" + NEEDLE
    document_id = add(gateway, text)
    retrieval.context_messages(gateway, "alice", [document_id], QUESTION)
    rows = stored(gateway, document_id)
    assert [(row.start, row.text) for row in rows] == retrieval.split(text)
    assert {row.embed_model for row in rows} == {"all-minilm"}
    assert {len(row.embedding) for row in rows} == {384 * 4}  # float32, the model's declared size
    double.reset()
    again = retrieval.context_messages(gateway, "alice", [document_id], "Where is the vault?")
    assert embed_inputs(double) == [["Where is the vault?"]] and again
    # Another worker (another Gateway on the same database) reuses them too.
    double.reset()
    retrieval.context_messages(build(DOCUMENT_CONTEXT_CHARS=2000), "alice", [document_id], QUESTION)
    assert embed_inputs(double) == [[QUESTION]]


def test_a_new_embed_model_embeds_the_parts_again(build, double):
    text = filler(20000, 4)
    gateway = build(DOCUMENT_CONTEXT_CHARS=2000)
    document_id = add(gateway, text)
    retrieval.context_messages(gateway, "alice", [document_id], QUESTION)
    double.reset()
    retrieval.context_messages(build(DOCUMENT_CONTEXT_CHARS=2000, EMBED_MODEL="llama3.2"), "alice", [document_id],
                               QUESTION)
    assert embed_inputs(double) == [[QUESTION], [chunk for _, chunk in retrieval.split(text)]]
    rows = stored(gateway, document_id)
    assert len(rows) == len(retrieval.split(text)) and {row.embed_model for row in rows} == {"llama3.2"}
    assert {len(row.embedding) for row in rows} == {3072 * 4}


def test_parts_keep_the_order_named_and_each_document_its_name(build, double):
    gateway = build(DOCUMENT_CONTEXT_CHARS=3000)
    first = add(gateway, filler(9000, 5) + "\n\n" + NEEDLE + "\n\n" + filler(3000, 6), "first.txt")
    second = add(gateway, filler(4000, 7) + "\n\nThe Zorbian fleet sails at dawn with its secret code.", "second.txt")
    messages = retrieval.context_messages(gateway, "alice", [second, first], QUESTION)
    assert [m["content"].split(" (id ")[0] for m in messages] == ["Document second.txt", "Document first.txt"]
    assert {part["name"] for part in parts_of(messages[0])} == {"second.txt"}
    assert any(NEEDLE in part["text"] for part in parts_of(messages[1]))


def test_a_blank_question_takes_every_documents_beginning(build, double):
    gateway = build(DOCUMENT_CONTEXT_CHARS=2000)
    first, second = add(gateway, filler(6000, 8), "a.txt"), add(gateway, filler(6000, 9), "b.txt")
    messages = retrieval.context_messages(gateway, "alice", [first, second], "  ")
    assert [[part["part"] for part in parts_of(m)] for m in messages] == [[1], [1]]
    assert len(embed_inputs(double)) == 2 and ["  "] not in embed_inputs(double)  # each document's parts, no question


def test_a_budget_smaller_than_a_part_sends_the_closest_parts_beginning(build):
    gateway = build(DOCUMENT_CONTEXT_CHARS=500)
    text = filler(3000, 10) + "\n\n" + NEEDLE + " " + filler(3000, 11)
    document_id = add(gateway, text)
    [message] = retrieval.context_messages(gateway, "alice", [document_id], QUESTION)
    [part] = parts_of(message)
    assert len(part["text"]) == 500 and text[part["start"]:part["end"]] == part["text"]


def test_another_keys_or_an_unknown_document_is_not_found(build, double):
    gateway = build()
    mine, theirs = add(gateway, "mine"), add(gateway, "theirs", key="bob")
    with pytest.raises(DocumentNotFound):
        retrieval.context_messages(gateway, "alice", [mine, theirs], QUESTION)
    with pytest.raises(DocumentNotFound):
        retrieval.context_messages(gateway, "alice", ["doc_000000000000000000000000"], QUESTION)
    assert embed_inputs(double) == []


def test_an_embedding_failure_propagates_and_stores_nothing(build, double):
    gateway = build(DOCUMENT_CONTEXT_CHARS=2000, EMBED_MODEL="ghost")
    document_id = add(gateway, filler(10000, 12))
    with pytest.raises(OllamaError) as raised:
        retrieval.context_messages(gateway, "alice", [document_id], QUESTION)
    assert raised.value.kind == "model_not_found"
    assert stored(gateway, document_id) == []


def test_split_cuts_at_breaks_with_a_small_overlap():
    text = filler(30000, 13)
    parts = retrieval.split(text)
    assert all(text[start:start + len(chunk)] == chunk and len(chunk) <= retrieval.CHUNK_CHARS
               for start, chunk in parts)
    assert all(chunk.endswith(".") for _, chunk in parts)  # every cut is at a sentence end here
    ends = [start + len(chunk) for start, chunk in parts]
    assert all(0 <= end - start <= retrieval.OVERLAP_CHARS for end, (start, _) in zip(ends, parts[1:]))
    assert retrieval.split("x" * 2500) == [(0, "x" * 1200), (1200, "x" * 1200), (2400, "x" * 100)]
    assert retrieval.split("  \n ") == [] and retrieval.split(" one ") == [(1, "one")]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_embedding_one_document_at_once_both_answer(build, double, request, backend):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    workers = [build(url, DOCUMENT_CONTEXT_CHARS=2000), build(url, DOCUMENT_CONTEXT_CHARS=2000)]
    text = filler(20000, 14) + "\n\n" + NEEDLE
    document_id = add(workers[0], text)
    both_embedded = threading.Barrier(2, timeout=10)
    for worker in workers:  # both have their vectors before either stores them
        def call(path, body, _call=worker.upstreams.call, **route):
            answer = _call(path, body, **route)
            if len(body["input"]) > 1:
                both_embedded.wait()
            return answer
        worker.upstreams.call = call
    results, errors = [None, None], []

    def run(index):
        try:
            results[index] = retrieval.context_messages(workers[index], "alice", [document_id], QUESTION)
        except Exception as error:  # noqa: BLE001 - the assertion below shows it
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and results[0] == results[1] and any(NEEDLE in m["content"] for m in results[0])
    rows = stored(workers[0], document_id)
    assert [(row.start, row.text) for row in rows] == retrieval.split(text)
    assert {row.embed_model for row in rows} == {"all-minilm"} and all(len(row.embedding) == 384 * 4 for row in rows)
    double.reset()
    retrieval.context_messages(workers[1], "alice", [document_id], QUESTION)
    assert embed_inputs(double) == [[QUESTION]]
