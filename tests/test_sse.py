"""SSE framing: the no-parse fast path frames exactly what the full parse would."""

from __future__ import annotations

import json

import pytest

from mlops_backend.sse import chunk_events, event, text_event


def go_line(text: str, chat: bool = False, **extra) -> bytes:
    """A token line as Ollama writes it (Go's field order, <>& escaped, compact)."""
    piece = {"message": {"role": "assistant", "content": text, **extra}} if chat else {"response": text, **extra}
    obj = {"model": "llama3.2", "created_at": "2024-07-22T20:47:51.1Z", **piece, "done": False}
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


TEXTS = ["tok", " with space", "é漢字🦙", "", "<b>&", 'say "hi"', "back\\slash", "new\nline", "\r", "\u2028", "\x85"]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_fast_path_matches_the_full_parse(text, chat):
    line = go_line(text, chat)
    slow = []
    assert chunk_events(json.loads(line), slow) is False
    fast = text_event(line)
    if fast is None:
        return  # left to the full parse, which is always right
    assert (fast == b"") == (slow == [])
    if fast:
        assert json.loads(fast[6:]) == json.loads(slow[0][6:]) == {"text": text}


def test_fast_path_takes_the_common_shape_and_leaves_the_rest():
    assert text_event(go_line("tok")) == b'data: {"text":"tok"}\n\n'
    assert text_event(go_line("tok", chat=True)) == b'data: {"text":"tok"}\n\n'
    assert text_event(go_line("tok", thinking="hmm")) is None
    assert text_event(go_line("", chat=True, tool_calls=[{"function": {"name": "f"}}])) is None
    assert text_event(b'{"model":"m","response":"x","done":true,"eval_count":1}') is None
    assert text_event(b'{"error":"boom"}') is None


def test_event_is_one_data_line():
    framed = event({"text": "a\nb\r\u2028c"})
    assert framed.count(b"\n") == 2 and framed.endswith(b"\n\n")
    assert len([line for line in framed.decode().splitlines() if line]) == 1
