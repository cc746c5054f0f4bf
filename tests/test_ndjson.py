"""The line splitter of every relay: lines leave as soon as they are complete, whatever the read boundaries."""

from __future__ import annotations

import time

import pytest

from mlops_backend.upstream.ndjson import Lines, LineTooLong

BODY = b'{"x":"1\\n2"}\n{"y":2}\n\n{"z":3}\n'
LINES = [b'{"x":"1\\n2"}', b'{"y":2}', b'{"z":3}']


def test_every_byte_boundary_gives_the_same_lines():
    for cut in range(1, len(BODY)):
        lines = Lines()
        assert lines.feed(BODY[:cut]) + lines.feed(BODY[cut:]) == LINES, cut
        assert not lines.inside_line


def test_lines_that_arrive_together_leave_together_and_none_waits_for_the_next_read():
    lines = Lines()
    assert lines.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert lines.inside_line and lines.leftover() == b'{"b"'
    assert lines.feed(b":2}\n") == [b'{"b":2}']


def test_blank_lines_are_skipped_and_an_unterminated_last_line_is_kept():
    lines = Lines()
    assert lines.feed(b"\n \n{}\n\n") == [b"{}"]
    assert lines.feed(b'{"last":true}') == [] and lines.leftover() == b'{"last":true}'


def _feed_cpu(pieces: list[bytes], limit: int) -> float:
    lines = Lines(limit)
    started = time.process_time()
    out = [line for piece in pieces for line in lines.feed(piece)]
    spent = time.process_time() - started
    assert len(out) == 1 and len(out[0]) == sum(map(len, pieces)) - 1
    return spent


def test_a_line_spanning_thousands_of_reads_costs_time_linear_in_its_length():
    """10 MB in 2,560 reads of 4 KiB against the same line in one read, in the same run: rejoining the
    buffer on every read (quadratic) made the first about a thousand times the second; linear assembly
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
    short = Lines(limit=1024)
    assert short.feed(b'{"a":1}\n' + b"b" * 1000) == [b'{"a":1}']  # short lines flow while a long one builds
