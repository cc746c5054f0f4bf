"""The chunked NDJSON decoder: lines leave as soon as they are complete, whatever the read boundaries."""

from __future__ import annotations

import time

import pytest

from mlops_backend.upstream.ndjson import ChunkedLines, Lines, LineTooLong


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


# -- long lines: bounded, and assembled in linear time --------------------------------------------------------


def _feed_cpu(pieces: list[bytes], limit: int) -> float:
    lines = Lines(limit)
    started = time.process_time()
    out = [line for piece in pieces for line in lines.feed(piece)]
    spent = time.process_time() - started
    assert len(out) == 1 and len(out[0]) == sum(map(len, pieces)) - 1
    return spent


def test_a_line_spanning_thousands_of_reads_costs_time_linear_in_its_length():
    """10 MB in 2,560 reads of 4 KiB against the same line in one read, in the same run: rejoining the
    buffer on every read (quadratic) makes the first about a thousand times the second; linear assembly
    keeps them close."""
    line = b'{"response":"' + b"x" * (10 * 1024 * 1024) + b'"}\n'
    whole = min(_feed_cpu([line], len(line)) for _ in range(3))
    pieces = [line[i:i + 4096] for i in range(0, len(line), 4096)]
    split = min(_feed_cpu(pieces, len(line)) for _ in range(3))
    assert split < 20 * whole + 0.05, (split, whole)


def test_a_line_over_the_limit_is_refused_as_soon_as_it_is():
    lines = Lines(limit=1024)
    assert lines.feed(b"x" * 1000) == []
    with pytest.raises(LineTooLong, match="MAX_UPSTREAM_LINE_BYTES"):
        lines.feed(b"x" * 100)  # still no newline, and already 1,100 bytes
    with pytest.raises(LineTooLong):
        Lines(limit=1024).feed(b"y" * 2000 + b"\n")  # a whole line in one read
    assert Lines(limit=1024).feed(b"z" * 1024 + b"\n") == [b"z" * 1024]  # the limit itself is fine


def test_the_decoder_applies_the_limit_to_lines_and_keeps_short_ones_flowing():
    decoder = ChunkedLines(chunked=True, max_line=1024)
    first = b'{"a":1}\n' + b"b" * 1000
    assert decoder.feed(b"%x\r\n%s\r\n" % (len(first), first)) == [b'{"a":1}']
    with pytest.raises(LineTooLong):
        decoder.feed(b"%x\r\n%s\r\n" % (100, b"b" * 100))


@pytest.mark.parametrize("size", [b"+1a", b"0x1a", b"1_a", b" 1a", b"-1", b""])
def test_chunk_sizes_are_plain_hex_digits(size):
    with pytest.raises(ValueError):
        ChunkedLines(chunked=True).feed(size + b"\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n")
