"""The Documents service through real gunicorn: uploads whose text comes back exact, every bad upload refused
with its status and nothing stored, ownership, and documents in prompts (conversations and /api/llm/chat)."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from mlops_backend.security.keys import make_entry, new_token
from tests.support import GatewayProcess, keys_file
from tests.test_extract import lines, make_docx, make_pdf, many_pages

ALICE, BOB = new_token(), new_token()
ROOT = "/api/llm/documents"
PDF_PAGES = [["Quarterly report", "Revenue rose by twelve percent."], ["Second page", "Costs fell in the north."],
             ["Third page", "The board meets in May."]]
HTML = (b"<html><head><title>T</title><style>p {color: red}</style><script>alert(1)</script></head>"
        b"<body><h1>Opening hours</h1><p>Monday to Friday, <b>9 to 5</b>.</p><ul><li>Closed on Sundays</li></ul>"
        b"</body></html>")


@pytest.fixture(scope="module")
def gw(double, tmp_path_factory):
    keys = keys_file(tmp_path_factory, make_entry("alice", ALICE, ["use"]), make_entry("bob", BOB, ["use"]))
    database = tmp_path_factory.mktemp("documents") / "gateway.db"
    process = GatewayProcess(double.url, API_KEYS_FILE=keys, DATABASE_URL=f"sqlite:///{database}",
                             DOCUMENT_CONTEXT_CHARS="2000").start()
    yield process
    process.stop()


def call(gateway, method, path, key=ALICE, **kwargs):
    response = requests.request(method, gateway.url + path, headers={"Authorization": f"Bearer {key}",
                                                                     "Connection": "close"}, timeout=60, **kwargs)
    response.close()
    return response


def upload(gateway, filename, data, media_type=None, key=ALICE):
    file = (filename, data, media_type) if media_type else (filename, data)
    return call(gateway, "POST", ROOT, key, files={"file": file})


def listed(gateway, key=ALICE) -> list[str]:
    return [d["id"] for d in call(gateway, "GET", ROOT, key).json()["documents"]]


@pytest.mark.parametrize("filename,make,media_type,kind,pages,expected", [
    ("report.pdf", lambda: make_pdf(PDF_PAGES), "application/pdf", "application/pdf", 3,
     [line for page in PDF_PAGES for line in page]),
    ("plan.docx", make_docx, None, "application/vnd.openxmlformats-officedocument.wordprocessingml.document", None,
     None),
    ("hours.html", lambda: HTML, "text/html", "text/html", None,
     ["T", "Opening hours", "Monday to Friday, 9 to 5.", "Closed on Sundays"]),
    ("notes.md", lambda: b"# Notes\n\n- one\n- two\n", "text/markdown", "text/markdown", None,
     ["# Notes", "- one", "- two"]),
    ("plain.txt", lambda: "Caf\u00e9 ol\u00e9\r\nsecond line".encode(), "text/plain", "text/plain", None,
     ["Caf\u00e9 ol\u00e9", "second line"]),
])
def test_an_upload_comes_back_as_its_exact_text(gw, double, filename, make, media_type, kind, pages, expected):
    response = upload(gw, filename, make(), media_type)
    assert response.status_code == 201, response.text
    document = response.json()
    assert document["filename"] == filename and document["media_type"] == kind
    assert document.get("pages") == pages and document["id"].startswith("doc_")
    full = call(gw, "GET", f"{ROOT}/{document['id']}").json()
    assert full["characters"] == document["characters"] == len(full["text"])
    if expected is None:  # the DOCX: its paragraphs and table rows in document order (see test_extract)
        assert lines(full["text"])[:2] == ["Project plan", "The first paragraph has bold and italic words."]
        assert lines(full["text"])[-1] == "A closing paragraph after the table."
    else:  # a PDF's pages are separated by form feeds
        assert lines(full["text"].replace("\f", "\n")) == expected
    assert "text" not in call(gw, "GET", f"{ROOT}/{document['id']}", params={"text": "false"}).json()
    assert document["id"] in listed(gw)
    assert double.requests == []  # extraction is the gateway's own: Ollama is not asked


@pytest.mark.parametrize("filename,data,media_type,status,words", [
    ("picture.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png", 415, "not supported"),
    ("report.pdf", HTML, "application/pdf", 422, "not a valid PDF"),  # claimed PDF, bytes not one: broken
    ("page.html", make_pdf(PDF_PAGES), "text/html", 415, None),
    ("report.pdf", make_pdf(PDF_PAGES)[:400], "application/pdf", 422, None),
    ("plan.docx", b"PK\x03\x04 not really a zip", None, 422, None),
    ("odd.txt", b"bytes that are not UTF-8: \xc3\x28 here", "text/plain", 422, "UTF-8"),
    ("huge.pdf", many_pages(), "application/pdf", 413, "pages"),
])
def test_a_bad_upload_is_refused_clearly_and_leaves_nothing(gw, double, filename, data, media_type, status, words):
    before = listed(gw)
    response = upload(gw, filename, data, media_type)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    if words:
        assert words in response.json()["detail"], response.json()
    assert listed(gw) == before


def test_an_encrypted_pdf_is_422_naming_the_problem(gw, double):
    import io

    import pypdf

    writer = pypdf.PdfWriter(clone_from=io.BytesIO(make_pdf(PDF_PAGES)))
    writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    response = upload(gw, "locked.pdf", out.getvalue(), "application/pdf")
    assert response.status_code == 422 and "encrypted" in response.json()["detail"].lower()


def test_over_max_document_bytes_is_413_before_the_body_is_read(gw, double):
    """A Content-Length over the limit is answered at once: the client has sent no body byte."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /api/llm/documents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ALICE.encode()
                     + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 50000000\r\n\r\n")
        started = time.monotonic()
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert time.monotonic() - started < 2


def test_another_key_cannot_see_read_or_delete_a_document(gw, double):
    document = upload(gw, "secret.txt", b"only for alice", "text/plain").json()["id"]
    assert document not in listed(gw, BOB)
    assert call(gw, "GET", f"{ROOT}/{document}", BOB).status_code == 404
    assert call(gw, "DELETE", f"{ROOT}/{document}", BOB).status_code == 404
    chat = call(gw, "POST", "/api/llm/chat", BOB, json={"messages": [{"role": "user", "content": "hi"}],
                                                       "documents": [document]})
    assert chat.status_code == 404 and "No document" in chat.json()["detail"]
    assert call(gw, "DELETE", f"{ROOT}/{document}").status_code == 204
    assert call(gw, "GET", f"{ROOT}/{document}").status_code == 404


def test_a_small_document_is_sent_whole_after_the_system_prompt(gw, double):
    document = upload(gw, "hours.html", HTML, "text/html").json()["id"]
    answer = call(gw, "POST", "/api/llm/chat", json={"documents": [document], "messages": [
        {"role": "system", "content": "Answer from the documents."}, {"role": "user", "content": "When open?"}]})
    assert answer.status_code == 200, answer.text
    [body] = [r["body"] for r in double.requests if r["path"] == "/api/chat"]
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "system", "user"] and "documents" not in body
    carried = body["messages"][1]["content"]
    assert "hours.html" in carried and "Monday to Friday, 9 to 5." in carried and "alert" not in carried


def test_a_conversation_turn_sends_system_then_documents_then_history(gw, double):
    document = upload(gw, "notes.md", b"# Notes\n\nThe code word is heron.\n", "text/markdown").json()["id"]
    conversation = call(gw, "POST", "/api/llm/conversations", json={"system": "S"}).json()["id"]
    assert call(gw, "POST", f"/api/llm/conversations/{conversation}/messages",
                json={"content": "first", "stream": False}).status_code == 200
    turn = call(gw, "POST", f"/api/llm/conversations/{conversation}/messages",
                json={"content": "What is the code word?", "documents": [document], "stream": False})
    assert turn.status_code == 200, turn.text
    sent = [r["body"] for r in double.requests if r["path"] == "/api/chat"][-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user", "assistant", "user"]
    assert sent[0]["content"] == "S" and "The code word is heron." in sent[1]["content"]
    stored = call(gw, "GET", f"/api/llm/conversations/{conversation}").json()["messages"]
    assert stored[2]["documents"] == [document]


def test_a_document_ten_times_the_budget_sends_the_chunk_that_holds_the_answer(gw, double):
    filler = [f"Paragraph {i} is about the harbour, the ships and the weather of that week." for i in range(300)]
    filler[137] = "The lighthouse keeper is called Ingrid Halvorsen and she has kept it since 1987."
    text = "\n\n".join(filler).encode()
    assert len(text) > 10 * 2000
    document = upload(gw, "harbour.txt", text, "text/plain").json()["id"]
    answer = call(gw, "POST", "/api/llm/chat", json={"documents": [document], "messages": [
        {"role": "user", "content": "Who is the lighthouse keeper?"}]})
    assert answer.status_code == 200, answer.text
    body = [r["body"] for r in double.requests if r["path"] == "/api/chat"][-1]
    carried = body["messages"][0]["content"]
    assert "Ingrid Halvorsen" in carried and "harbour.txt, part " in carried
    assert len(carried) < 2000 + 1000  # the budget, and the labels
    embeds = [r for r in double.requests if r["path"] == "/api/embed"]
    assert embeds and all(r["body"]["model"] == "all-minilm" for r in embeds)


def test_chat_stream_takes_documents_too(gw, double):
    document = upload(gw, "notes.md", b"The code word is heron.", "text/markdown").json()["id"]
    response = requests.post(gw.url + "/api/llm/chat/stream", headers={"Authorization": f"Bearer {ALICE}"},
                             json={"documents": [document], "messages": [{"role": "user", "content": "word?"}]},
                             timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    assert '"done":true' in response.text
    [body] = [r["body"] for r in double.requests if r["path"] == "/api/chat"]
    assert body["stream"] is True and [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "The code word is heron." in body["messages"][0]["content"] and "documents" not in body
    missing = requests.post(gw.url + "/api/llm/chat/stream", headers={"Authorization": f"Bearer {ALICE}"},
                            json={"documents": ["doc_nope"], "messages": [{"role": "user", "content": "x"}]},
                            timeout=30)
    assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/problem+json"
