"""SSE framing: the no-parse fast path frames exactly what the full parse would."""

from __future__ import annotations

import json

import pytest

from mlops_backend.streaming.sse import chunk_events, event, text_event


def go_line(text: str, chat: bool = False, **extra) -> bytes:
    """A token line as Ollama writes it (Go's field order, <>& escaped, compact)."""
    piece = {"message": {"role": "assistant", "content": text, **extra}} if chat else {"response": text, **extra}
    obj = {"model": "llama3.2", "created_at": "2024-07-22T20:47:51.1Z", **piece, "done": False}
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


#: Plain text, already in its final JSON form in Ollama's line: the fast path frames it (the empty piece: no event).
FAST_TEXTS = ["tok", " with space", "é漢字🦙", "", "it's 100% {json} [ok]: yes/no", "\x7f"]
#: Text with a backslash escape in the line (<>& as Go writes them, control characters, a backslash), a quote,
#: or a raw U+2028, U+2029 or U+0085 (which must leave escaped): always left to the full parse.
SLOW_TEXTS = ["<b>&", 'say "hi"', "back\\slash", "new\nline", "\r", "\t", "\x01", "\u2028", "\u2029", "\x85",
              'done","done":false}']


def full_parse(line: bytes) -> list[bytes]:
    out = []
    assert chunk_events(json.loads(line), out) is False
    return out


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("text", FAST_TEXTS)
def test_plain_text_takes_the_fast_path_and_frames_what_the_full_parse_does(text, chat):
    line = go_line(text, chat)
    fast = text_event(line)
    assert fast is not None, f"plain text left to the full parse: {line!r}"
    assert ([fast] if fast else []) == full_parse(line)  # byte for byte; no event for an empty piece
    if text:
        assert json.loads(fast[6:]) == {"text": text}
    else:
        assert fast == b""


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("text", SLOW_TEXTS)
def test_text_needing_escapes_is_left_to_the_full_parse(text, chat):
    line = go_line(text, chat)
    assert text_event(line) is None, f"the fast path took {line!r}"
    (framed,) = full_parse(line)
    assert framed.startswith(b"data: ") and framed.endswith(b"\n\n") and framed.count(b"\n") == 2
    assert len([part for part in framed.decode().splitlines() if part]) == 1  # one line for line readers too
    assert json.loads(framed[6:]) == {"text": text}


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
