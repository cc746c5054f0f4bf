"""Compressed request bodies (Content-Encoding zstd, gzip): decoded, checked and sent on decoded, or refused.

The unit tests read bodies in a Flask request context; the others go through the real gateway under
gunicorn to the Ollama double, whose request log shows what Ollama would have received.
"""

from __future__ import annotations

import gzip
import json

import pytest
import requests
import zstandard
from flask import Flask

from mlops_backend.errors import ApiError
from mlops_backend.security.keys import make_entry, new_token
from mlops_backend.security.request_body import read_body
from tests.support import API_KEY, GatewayProcess, keys_file

BODY = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi " * 500}]}).encode()
ZSTD = zstandard.ZstdCompressor(level=3).compress


def read(data: bytes, encoding: str | None, limit: int = 1 << 20) -> bytes:
    app = Flask(__name__)
    headers = {"Content-Encoding": encoding} if encoding is not None else {}
    with app.test_request_context("/", method="POST", data=data, headers=headers):
        from flask import request

        request.max_content_length = limit
        return read_body()


@pytest.mark.parametrize("encoding,encode", [
    (None, lambda b: b), ("identity", lambda b: b), ("zstd", ZSTD), ("gzip", gzip.compress),
    ("x-gzip", gzip.compress), ("ZSTD", ZSTD), (" gzip ", gzip.compress),
    ("gzip, zstd", lambda b: ZSTD(gzip.compress(b))), ("zstd, identity", ZSTD),
    ("zstd", lambda b: ZSTD(b[:100]) + ZSTD(b[100:])),              # two zstd frames
    ("gzip", lambda b: gzip.compress(b[:100]) + gzip.compress(b[100:])),  # two gzip members
])
def test_each_coding_decodes_to_the_body(encoding, encode):
    assert read(encode(BODY), encoding) == BODY


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "zstd, br", "gzip, gzip, gzip"])
def test_other_codings_are_refused_with_415_naming_the_ones_we_decode(encoding):
    with pytest.raises(ApiError) as refused:
        read(b"whatever", encoding)
    assert refused.value.status == 415 and refused.value.headers == {"Accept-Encoding": "zstd, gzip"}


@pytest.mark.parametrize("encoding,data", [
    ("zstd", ZSTD(BODY)[:-7]),                 # truncated inside the frame
    ("zstd", ZSTD(BODY) + b"trailing junk"),
    ("zstd", b"not zstd at all"),
    ("gzip", gzip.compress(BODY)[:-9]),
    ("gzip", b"\x1f\x8b not gzip"),
    ("zstd", gzip.compress(BODY)),              # labelled as the wrong coding
])
def test_a_body_that_does_not_decode_is_400_never_half_read(encoding, data):
    with pytest.raises(ApiError) as refused:
        read(data, encoding)
    assert refused.value.status == 400 and refused.value.slug == "malformed-encoding"


@pytest.mark.parametrize("encoding,encode", [("zstd", ZSTD), ("gzip", gzip.compress)])
def test_the_limit_holds_for_the_decompressed_size(encoding, encode):
    bomb = encode(b"\0" * (64 << 20))  # 64 MiB of zeros: a few kilobytes compressed
    assert len(bomb) < 100_000
    with pytest.raises(ApiError) as refused:
        read(bomb, encoding, limit=1 << 20)
    assert refused.value.status == 413
    assert read(encode(b"\0" * (1 << 20)), encoding, limit=1 << 20) == b"\0" * (1 << 20)  # exactly the limit


def test_a_zstd_frame_asking_for_a_huge_window_is_refused():
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=27)
    data = zstandard.ZstdCompressor(compression_params=params).compress(b"x" * (20 << 20))
    with pytest.raises(ApiError) as refused:
        read(data, "zstd", limit=64 << 20)
    assert refused.value.status == 400


# -- through the gateway ------------------------------------------------------------------------------------

LLAMA_ONLY = new_token()


@pytest.fixture(scope="module")
def gw(double, tmp_path_factory):
    keys = keys_file(tmp_path_factory, make_entry("admin", API_KEY, ["admin"]),
                     make_entry("llama-only", LLAMA_ONLY, ["use"], models=["llama3.2"]))
    process = GatewayProcess(double.url, API_KEYS_FILE=keys, API_KEY="", MAX_BODY_BYTES="65536").start()
    yield process
    process.stop()


def post(gw, path, data, encoding, key=API_KEY, content_type="application/json"):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type, "Connection": "close"}
    if encoding:
        headers["Content-Encoding"] = encoding
    return requests.post(gw.url + path, data=data, headers=headers, timeout=10)


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}),
    ("/ollama/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}),
    ("/ollama/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}),
    ("/api/llm/generate", {"model": "llama3.2", "prompt": "hi"}),
])
@pytest.mark.parametrize("encoding,encode", [("zstd", ZSTD), ("gzip", gzip.compress)])
def test_compressed_bodies_reach_ollama_decoded(gw, double, path, body, encoding, encode):
    raw = json.dumps(body).encode()
    response = post(gw, path, encode(raw), encoding)
    assert response.status_code == 200, response.text
    [seen] = double.requests
    sent = seen["body"]  # the double records the JSON it parsed: None had the body reached it still compressed
    if path == "/api/llm/generate":  # our own route builds Ollama's request from the validated one
        assert sent["prompt"] == body["prompt"] and sent["model"] == body["model"], sent
    else:
        assert sent == body
    assert "content-encoding" not in {name.lower() for name in seen["headers"]}


def test_the_allow_list_is_checked_on_the_decoded_body(gw, double):
    body = json.dumps({"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for path, shape in (("/v1/chat/completions", "openai"), ("/ollama/api/chat", "ollama"), ("/v1/messages", "anthropic")):
        refused = post(gw, path, ZSTD(body), "zstd", key=LLAMA_ONLY)
        assert refused.status_code == 403, refused.text
        error = refused.json()
        message = {"openai": lambda e: e["error"]["message"], "ollama": lambda e: e["error"],
                   "anthropic": lambda e: e["error"]["message"]}[shape](error)
        assert "may not use the model 'qwen2.5:0.5b'" in message
    assert double.requests == []


def test_a_coding_we_do_not_decode_is_415_in_each_apis_shape(gw, double):
    openai = post(gw, "/v1/chat/completions", b"\x00", "br")
    assert openai.status_code == 415 and openai.headers["Accept-Encoding"] == "zstd, gzip"
    assert openai.json()["error"]["type"] == "invalid_request_error"
    ollama = post(gw, "/ollama/api/chat", b"\x00", "br")
    assert ollama.status_code == 415 and "not one the gateway decodes" in ollama.json()["error"]
    anthropic = post(gw, "/v1/messages", b"\x00", "deflate")
    assert anthropic.status_code == 415 and anthropic.json()["type"] == "error"
    ours = post(gw, "/api/llm/chat", b"\x00", "br")
    assert ours.status_code == 415 and ours.headers["Content-Type"] == "application/problem+json"
    assert double.requests == []


def test_a_decompression_bomb_is_413_and_nothing_reaches_ollama(gw, double):
    bomb = ZSTD(b'{"model": "llama3.2", "prompt": "' + b"a" * (8 << 20) + b'"}')
    assert len(bomb) < 65536
    for path in ("/v1/completions", "/ollama/api/generate", "/api/llm/generate"):
        refused = post(gw, path, bomb, "zstd")
        assert refused.status_code == 413, (path, refused.text)
    assert double.requests == []
