"""The chunked NDJSON decoder: lines leave as soon as they are complete, whatever the read boundaries."""

from __future__ import annotations

import pytest

from mlops_backend.ndjson import ChunkedLines


def chunked(*payloads: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\n\r\n"


def test_lines_split_across_and_within_chunks():
    body = chunked(b'{"a":1}\n{"b"', b':2}\n', b'{"c":3}\n')
    decoder = ChunkedLines(chunked=True)
    assert decoder.feed(body) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert decoder.finished


def test_every_byte_boundary_gives_the_same_lines():
    body = chunked(b'{"x":"1\\n2"}\n', b'{"y":2}\n{"z":3}\n')
    for cut in range(1, len(body)):
        decoder = ChunkedLines(chunked=True)
        lines = decoder.feed(body[:cut]) + decoder.feed(body[cut:])
        assert lines == [b'{"x":"1\\n2"}', b'{"y":2}', b'{"z":3}'], cut
        assert decoder.finished


def test_a_complete_line_is_returned_without_waiting_for_the_next():
    decoder = ChunkedLines(chunked=True)
    assert decoder.feed(b'8\r\n{"a":1}\n\r\n') == [b'{"a":1}']
    assert not decoder.finished


def test_trailers_and_extensions():
    decoder = ChunkedLines(chunked=True)
    assert decoder.feed(b'8;ext=1\r\n{"a":1}\n\r\n0\r\nX-Trailer: y\r\n\r\n') == [b'{"a":1}']
    assert decoder.finished


def test_identity_body_with_length():
    decoder = ChunkedLines(chunked=False, length=16)
    assert decoder.feed(b'{"a":1}\n{"b":2}\nEXTRA') == [b'{"a":1}', b'{"b":2}']
    assert decoder.finished


def test_blank_lines_are_skipped_and_leftover_is_kept():
    decoder = ChunkedLines(chunked=False)
    assert decoder.feed(b'\n\n{"a":1}\n{"b"') == [b'{"a":1}']
    assert decoder.leftover() == b'{"b"'


@pytest.mark.parametrize("bad", [b"zz\r\nabc\r\n", b"3\r\nabcXY", b"1" * 2000])
def test_broken_framing_is_an_error(bad):
    with pytest.raises(ValueError):
        ChunkedLines(chunked=True).feed(bad)
