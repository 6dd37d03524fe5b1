"""The JSONL line reader (``ingest._iter_lines``) reads blocks and splits them; it gives exactly the records of the
plain ``readline`` loop below (the reader before it), over every kind of line ending, byte-order mark, blank line,
over-long line (ended or not, in the middle or last) and block size, on random files (hypothesis)."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmplcheck.validator.findings import finding
from tmplcheck.validator.ingest import _BOM, _iter_lines


def readline_reader(fh, path: str, max_bytes: int):
    """The specification: one ``readline(max_bytes + 2)`` a line; an over-long one drained in 1 MiB reads."""
    lineno = 0
    while True:
        chunk = fh.readline(max_bytes + 2)
        if not chunk:
            return
        lineno += 1
        found = []
        if not chunk.endswith(b"\n") and len(chunk) > max_bytes:
            size = len(chunk)
            while True:
                more = fh.readline(1 << 20)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            found.append(finding("D022", f"line is {size} bytes, over the {max_bytes}-byte limit; not loaded",
                                 path=path, line=lineno))
            yield lineno, None, found
            continue
        if chunk.endswith(b"\r\n"):
            found.append(finding("D004", "line ends with CRLF", path=path, line=lineno))
            chunk = chunk[:-2]
        elif chunk.endswith(b"\n"):
            chunk = chunk[:-1]
        if lineno == 1 and chunk.startswith(_BOM):
            found.append(finding("D003", "file starts with a UTF-8 byte-order mark", path=path, line=1))
            chunk = chunk[len(_BOM):]
        yield lineno, chunk, found


def records(data: bytes, max_bytes: int, block: int | None = None):
    kw = {} if block is None else {"block": block}
    return [(r.line, r.data, r.findings) for r in _iter_lines(io.BytesIO(data), "f.jsonl", max_bytes, **kw)]


def spec(data: bytes, max_bytes: int):
    return list(readline_reader(io.BufferedReader(io.BytesIO(data)), "f.jsonl", max_bytes))


pieces = st.one_of(st.sampled_from([b"\n", b"\r\n", b"\r", b"{}", b'{"a": 1}', b" ", _BOM, b"\xef\xbb", b"x" * 9]),
                   st.binary(max_size=12))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pieces, max_size=40), st.integers(1, 14), st.integers(1, 9))
def test_block_reader_gives_the_readline_loops_records(parts, max_bytes, block):
    data = b"".join(parts)
    assert records(data, max_bytes, block) == spec(data, max_bytes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"", b"a", b"ab", b"abc", b"abcd", b"abcde", b"abcdef"]), max_size=12),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.integers(1, 8))
def test_lines_at_the_limit(lines, end, last_ended, block):
    """Lines of max_bytes - 1 .. max_bytes + 3 bytes, ended or not: D022 exactly where the readline loop says."""
    data = end.join(lines) + (end if last_ended and lines else b"")
    for max_bytes in (2, 3, 4):
        assert records(data, max_bytes, block) == spec(data, max_bytes)


def test_default_block_on_a_real_sized_file():
    rows = [b'{"conversations": [{"from": "human", "value": "q%d"}]}' % i for i in range(30000)]
    data = _BOM + b"\n".join(rows[:100]) + b"\r\n" + b"\n".join(rows[100:]) + b"\n" + b"y" * 5000 + b"\n{}"
    got = records(data, 4096)
    assert got == spec(data, 4096)
    assert len(got) == 30002 and got[-2][1] is None and got[-2][2][0].code == "D022"
    assert [f.code for f in got[0][2]] == ["D003"] and got[99][2][0].code == "D004"


def test_an_over_long_line_is_not_kept_whole():
    """A line far over the limit is drained block by block: the reader never holds it (its reads stay near the
    limit plus a block)."""
    class Counting(io.BytesIO):
        biggest = 0

        def read(self, n=-1):
            out = super().read(n)
            Counting.biggest = max(Counting.biggest, len(out))
            return out

    data = b"{}\n" + b"z" * 200_000 + b"\n{}\n"
    got = [(r.line, r.data) for r in _iter_lines(Counting(data), "f.jsonl", 1000, block=4096)]
    assert got == [(1, b"{}"), (2, None), (3, b"{}")]
    assert Counting.biggest <= 4096
