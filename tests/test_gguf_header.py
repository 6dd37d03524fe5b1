"""The header-only GGUF reader (validator/gguf_header.py): the same key/values as gguf.GGUFReader on generated files
and on every vocabulary GGUF of the llama-cpp-python sdist, never a byte of the tensor section, and the loaders built
on it (templates from a GGUF's metadata, tokenizer conversions cached by the header's fingerprint)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from tmplcheck import assets  # noqa: E402
from tmplcheck.validator.gguf_header import (  # noqa: E402
    GGUFHeaderError,
    HeaderReader,
    read_header,
)

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}ü"


def _write(path: Path, *, tensors: bool = True, endianess=None) -> None:
    kw = {} if endianess is None else {"endianess": endianess}
    w = gguf.GGUFWriter(str(path), "llama", **kw)
    w.add_string("tokenizer.chat_template", TEMPLATE)
    w.add_string("tokenizer.chat_template.tool_use", "{{ tools }}")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "▁hé", ""] + [f"t{i}" for i in range(3000)])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.25] + [0.0] * 3004)
    w.add_array("tokenizer.ggml.token_type", [3, 3, 3, 3, 1, 1] + [1] * 3000)
    w.add_uint32("tokenizer.ggml.bos_token_id", 0)
    w.add_uint32("tokenizer.ggml.eos_token_id", 3)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_uint8("x.u8", 200)
    w.add_int8("x.i8", -5)
    w.add_uint16("x.u16", 60000)
    w.add_int16("x.i16", -3000)
    w.add_int32("x.i32", -70000)
    w.add_uint64("x.u64", 1 << 40)
    w.add_int64("x.i64", -(1 << 40))
    w.add_float32("x.f32", 1.5)
    w.add_float64("x.f64", 2.25)
    w.add_array("x.nested", [[1, 2], [3]])
    w.add_array("x.empty", [])
    if tensors:
        w.add_tensor("blk.0.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _same_as_reader(path: Path) -> None:
    h = read_header(path)
    r = gguf.GGUFReader(str(path))
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert list(h.fields) == keys
    for k in keys:
        f = r.fields[k]
        assert h.fields[k] == f.contents(), k
        assert list(h.types[k]) == [int(t) for t in f.types], k
    assert (h.tensor_count, h.kv_count) == (len(r.tensors), len(keys))
    # the reader stops where the tensor infos start (GGUFReader's first tensor field, or the data when there is none)
    first_ti = min((t.field.offset for t in r.tensors), default=None)
    if first_ti is not None:
        assert h.end == first_ti
    # the transformers stand-in: the same value parts as GGUFReader's fields
    hr = HeaderReader(path, h)
    for k in keys:
        if k == "x.nested":
            continue   # flattened; transformers has no nested arrays
        a, b = hr.fields[k], r.fields[k]
        assert [int(t) for t in a.types] == [int(t) for t in b.types], k
        assert len(a.data) == len(b.data), k
        for i, j in zip(a.data, b.data):
            assert np.array_equal(a.parts[i], b.parts[j]) and a.parts[i].dtype == b.parts[j].dtype.newbyteorder("="), k


def test_generated_file_every_value_type(tmp_path):
    p = tmp_path / "x.gguf"
    _write(p)
    _same_as_reader(p)
    h = read_header(p)
    assert h.fields["tokenizer.chat_template"] == TEMPLATE and h.version == 3 and h.byte_order == "<"
    assert h.fields["x.u64"] == 1 << 40 and h.fields["x.f32"] == 1.5 and h.fields["tokenizer.ggml.add_bos_token"] is True


def test_big_endian_file(tmp_path):
    p = tmp_path / "be.gguf"
    _write(p, tensors=False, endianess=gguf.GGUFEndian.BIG)
    h = read_header(p)
    assert h.byte_order == ">"
    assert h.fields["x.i64"] == -(1 << 40) and h.fields["tokenizer.ggml.eos_token_id"] == 3
    assert h.fields["tokenizer.ggml.scores"][:2] == [0.5, -1.25]


def test_tensor_section_is_never_read(tmp_path):
    """Metadata followed by tensor infos that claim 8 GiB of data the file does not have: GGUFReader refuses the
    file, the header reader never looks there."""
    p = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_string("tokenizer.chat_template", TEMPLATE)
    w.add_tensor_info("huge", [1 << 31], np.dtype(np.float32), 8 << 30)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with pytest.raises(Exception):  # noqa: B017 - whatever numpy's memmap says about the missing 8 GiB
        gguf.GGUFReader(str(p)).tensors[0].data.sum()
    # and scribbling over everything after the key/values changes nothing
    end = read_header(p).end
    with open(p, "r+b") as f:
        f.seek(end)
        f.write(os.urandom(os.path.getsize(p) - end))
    h = read_header(p)
    assert h.fields["tokenizer.chat_template"] == TEMPLATE and h.tensor_count == 1


def test_fingerprint_covers_the_metadata_only(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    _write(a)
    shutil.copy(a, b)
    end = read_header(b).end
    with open(b, "r+b") as f:          # other tensor bytes: same metadata, same fingerprint
        f.seek(os.path.getsize(b) - 8)
        f.write(b"\x01" * 8)
    assert read_header(a).sha256 == read_header(b).sha256
    with open(b, "r+b") as f:          # one metadata byte (a character of the template) changed: another one
        data = f.read(end)
        k = data.index("ü".encode())
        f.seek(k)
        f.write("ö".encode())
    assert read_header(a).sha256 != read_header(b).sha256


@pytest.mark.parametrize("bad, why", [(b"GGUX", "magic"), (b"GGUF\x01\x00\x00\x00", "version 1"),
                                      (b"GGUF\x03\x00\x00\x00" + b"\x00" * 8 + b"\x01" + b"\x00" * 7
                                       + b"\x01" + b"\x00" * 7 + b"k" + b"\x09\x00\x00\x00" + b"\x08\x00\x00\x00"
                                       + b"\xff" * 8, "elements"),
                                      (b"GGUF\x03\x00\x00\x00" + b"\x00" * 8 + b"\x05" + b"\x00" * 7, "end")])
def test_bad_files_are_refused_clearly(tmp_path, bad, why):
    p = tmp_path / "bad.gguf"
    p.write_bytes(bad + b"\x00" * 4)
    with pytest.raises(GGUFHeaderError, match=why if why != "end" else "end of the file|ends inside"):
        read_header(p)


def _vocab_ggufs() -> list[Path]:
    assets.ensure_sdist()
    return sorted(assets.sdist_dir().glob("ggml-vocab-*.gguf"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in _vocab_ggufs()])
def test_every_sdist_vocabulary_reads_like_gguf_reader(name):
    _same_as_reader(assets.sdist_dir() / name)


def test_template_from_a_gguf_with_bos_eos(tmp_path):
    from tmplcheck.templates import load_template

    p = tmp_path / "m.gguf"
    _write(p)
    t = load_template(str(p))
    assert t.source == TEMPLATE and t.meta.origin == str(p)
    assert t.render([{"role": "user", "content": "hi"}], add_generation_prompt=False).startswith("<|im_start|>user")
    assert load_template(f"{p}::tool_use").source == "{{ tools }}"
    with pytest.raises(Exception, match="named templates: tool_use"):
        load_template(f"{p}::nope")


def test_gguf_tokenizer_cache_is_keyed_by_the_header(tmp_path, monkeypatch):
    """A converted GGUF tokenizer is found again by the header's fingerprint (remembered per path, size, mtime and
    first MiB); the conversion reads the metadata through the header reader (transformers' own reader and
    gguf.GGUFReader are not used) and gives the same files as the built-in conversion of the same vocabulary."""
    g = tmp_path / "model.gguf"
    shutil.copy(assets.vocab_gguf("phi-3"), g)
    monkeypatch.setenv("TMPLCHECK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    os.symlink(assets.sdist_dir().parent, tmp_path / "cache" / assets.sdist_dir().parent.name)

    def refuse(*a, **k):
        raise AssertionError("the full GGUF reader was used")

    monkeypatch.setattr(gguf, "GGUFReader", refuse)
    d1 = assets.gguf_tokenizer_dir(g)
    assert d1.name == f"gguf-{read_header(g).sha256[:24]}"
    assert assets.converted_meta(d1)["fingerprint"] == read_header(g).sha256
    built = assets.converted_dir("phi-3")
    monkeypatch.undo()
    if (built / "tokenizer.json").is_file():   # the set-up converted it with the same code path
        assert (d1 / "tokenizer.json").read_text() == (built / "tokenizer.json").read_text()
    mtime = (d1 / "tokenizer.json").stat().st_mtime_ns
    monkeypatch.setenv("TMPLCHECK_CACHE", str(tmp_path / "cache"))
    import tmplcheck.validator.gguf_header as gh

    monkeypatch.setattr(gh, "read_header", refuse)      # a file seen before: not even its header is read again
    gh._MEMO.clear()
    assert assets.gguf_tokenizer_dir(g) == d1
    assert (d1 / "tokenizer.json").stat().st_mtime_ns == mtime
