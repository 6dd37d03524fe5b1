"""Real tokenizers, loaded with the ``tokenizers`` library only (no transformers, no torch on this path).

``load_tokenizer(spec)`` accepts a built-in name (``llama-3`` …, converted once from llama.cpp's vocabularies by
``python -m tmplcheck.assets prepare``), an HF model/tokenizer directory, a ``tokenizer.json`` file, a GGUF file
(converted once from its header and key/values, never its tensors, and cached by their sha256: ``tmplcheck/assets.py``)
or a hub id (``huggingface_hub.snapshot_download``, which honours ``HF_HUB_OFFLINE``). ``LlamaCppTokenizer`` is
llama.cpp's own tokenizer for a GGUF vocabulary, for comparing ids.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tokenizers import Encoding
from tokenizers import Tokenizer as _RustTokenizer

__all__ = ["Tokenizer", "TokenizerLoadError", "load_tokenizer", "LlamaCppTokenizer", "IdDivergence", "compare_ids",
           "compare_with_llama_cpp", "Encoding"]

_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                    "added_tokens.json", "chat_template.jinja", "chat_template.json", "config.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class TokenizerLoadError(ValueError):
    """A tokenizer spec that resolves to nothing loadable; the message names everything tried."""


def _token_str(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):  # serialised AddedToken
        return v["content"]
    return None


def _read_json(p: Path) -> dict:
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerLoadError(f"cannot read {p}: {e}") from e
    return d if isinstance(d, dict) else {}


class Tokenizer:
    """A fast tokenizer plus what the checks need to know about it (BOS policy, stop ids)."""

    def __init__(self, backend: _RustTokenizer, *, name: str, config: dict | None = None,
                 generation_config: dict | None = None, hf_dir: Path | None = None, gguf_path: Path | None = None,
                 fingerprint: str = ""):
        self._tk = backend
        self.name = name
        self.config = dict(config or {})
        self.hf_dir = hf_dir
        self.gguf_path = gguf_path
        self.fingerprint = fingerprint
        self.bos_token = _token_str(self.config.get("bos_token"))
        self.eos_token = _token_str(self.config.get("eos_token"))
        self.pad_token = _token_str(self.config.get("pad_token"))
        self.bos_id = self.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_id = self.token_to_id(self.eos_token) if self.eos_token else None
        self.pad_id = self.token_to_id(self.pad_token) if self.pad_token else None
        probe = "a"
        with_sp = backend.encode(probe, add_special_tokens=True).ids
        without = backend.encode(probe, add_special_tokens=False).ids
        extra_front = with_sp[: len(with_sp) - len(without)] if with_sp[-len(without):] == without else with_sp
        extra_back = with_sp[len(without):] if with_sp[: len(without)] == without else []
        self._pp_front, self._pp_back = list(extra_front), list(extra_back)   # what the post-processor adds
        self._bytes_checked, self._bytes = False, None
        self._pieces_checked, self._pieces = False, None
        self.adds_bos = self.bos_id is not None and bool(extra_front) and extra_front[0] == self.bos_id
        self.adds_eos = self.eos_id is not None and bool(extra_back) and extra_back[-1] == self.eos_id
        stop: set[int] = set()
        if self.eos_id is not None:
            stop.add(self.eos_id)
        gen_eos = (generation_config or {}).get("eos_token_id")
        for i in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
            if isinstance(i, int) and i >= 0:
                stop.add(i)
        self.generation_eos_ids: tuple[int, ...] = tuple(
            i for i in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) if isinstance(i, int))
        self.stop_ids: frozenset[int] = frozenset(stop)
        self._special_ids = frozenset(i for i, a in backend.get_added_tokens_decoder().items() if a.special)

    # --- the protocol -----------------------------------------------------------------------------------------
    @property
    def backend(self) -> _RustTokenizer:
        return self._tk

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the added tokens marked special (control tokens)."""
        return self._special_ids

    def is_special(self, i: int) -> bool:
        return i in self._special_ids

    def encode(self, text: str, *, add_special_tokens: bool = True) -> Encoding:
        return self._tk.encode(text, add_special_tokens=add_special_tokens)

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[Encoding]:
        return self._tk.encode_batch(list(texts), add_special_tokens=add_special_tokens)

    def encode_batch_spans(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list["TokenSpans"]:
        """Ids and character spans of each text as arrays, for the gate's per-row checks.

        For byte-level BPE tokenizers without a normalizer (Llama 3, Qwen2, GPT-2, ...) every id stands for a fixed
        byte string, so the spans follow from the ids alone: ``encode_batch_fast`` (no offsets tracked) and a
        per-id byte-length table give byte offsets, mapped to character offsets. That mapping is proven equal to the
        tokenizer's own offsets on a probe corpus when first used and re-checked per row (the byte lengths must add
        up to the text's UTF-8 length, else that row is encoded with offsets). Other tokenizers use
        ``encode_batch`` and its offsets."""
        texts = list(texts)
        if not texts:
            return []
        table = self._byte_table()
        if table is None:
            return [TokenSpans.of(e) for e in self._tk.encode_batch(texts, add_special_tokens=add_special_tokens)]
        front, back = (len(self._pp_front), len(self._pp_back)) if add_special_tokens else (0, 0)
        pieces = self.pieces()
        if pieces is not None:
            ids = pieces.encode(texts, add_special_tokens=add_special_tokens)
        else:
            ids = [e.ids for e in self._tk.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
        flat = _flat_spans(texts, ids, table) if not (front or back) else None
        out: SpanList = SpanList()
        for k, (text, row) in enumerate(zip(texts, ids)):
            if flat is not None and flat.exact[k]:
                a, b = flat.first[k], flat.first[k + 1]
                out.append(TokenSpans(row, flat.local_starts[a:b], flat.local_ends[a:b]))
                continue
            sp = _spans_from_bytes(text, row, table, front, back)
            out.append(sp if sp is not None else TokenSpans.of(self._tk.encode(text,
                                                                               add_special_tokens=add_special_tokens)))
        out.flat = flat
        return out

    def pieces(self):
        """The exact pre-token-at-a-time encoder of this tokenizer (``validator/pieces.py``), or None when it does not
        apply; made and proven on probes once. ``TMPLCHECK_PIECES=0`` turns it off."""
        if not self._pieces_checked:
            self._pieces_checked = True
            if os.environ.get("TMPLCHECK_PIECES", "1") != "0":
                from tmplcheck.validator.pieces import PieceEncoder

                self._pieces = PieceEncoder.of(self._tk)
        return self._pieces

    def _byte_table(self):
        """The per-id byte lengths when ids alone give exact offsets for this tokenizer (else None); made once."""
        if self._bytes_checked:
            return self._bytes
        self._bytes_checked = True
        cached = self._table_cache()
        self._bytes = _load_table(cached) if cached is not None else None
        if self._bytes is None:
            self._bytes = _byte_length_table(self._tk)
            if self._bytes is not None and cached is not None:
                _save_table(cached, self._bytes)
        if self._bytes is not None:
            probes = _OFFSET_PROBES + [a.content for a in self._tk.get_added_tokens_decoder().values()][:64]
            for add in (False, True):
                front, back = (len(self._pp_front), len(self._pp_back)) if add else (0, 0)
                for text in probes:
                    enc = self._tk.encode(text, add_special_tokens=add)
                    sp = _spans_from_bytes(text, enc.ids, self._bytes, front, back)
                    if sp is None or sp.offsets() != list(enc.offsets):
                        self._bytes = None
                        return None
        return self._bytes

    def _table_cache(self) -> Path | None:
        """Where the byte-length table of this tokenizer is kept between runs (made once, ~0.2 s for 128k ids)."""
        if not self.fingerprint:
            return None
        from tokenizers import __version__ as tv

        from tmplcheck.assets import cache_root

        return cache_root() / "byte-lengths" / f"{self.fingerprint}-{tv}.npy"

    def token_to_id(self, s: str) -> int | None:
        return self._tk.token_to_id(s)

    def id_to_token(self, i: int) -> str | None:
        return self._tk.id_to_token(i)

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def single_id(self, s: str) -> int | None:
        """The id ``s`` encodes to when it is exactly one token (parsed as special where it is one), else None."""
        ids = self._tk.encode(s, add_special_tokens=False).ids
        return ids[0] if len(ids) == 1 else None

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name!r}, vocab={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
                f"adds_bos={self.adds_bos}, stop_ids={sorted(self.stop_ids)})")


# --------------------------------------------------------------------------------------------------------------
# token spans as arrays
# --------------------------------------------------------------------------------------------------------------

@dataclass
class TokenSpans:
    """One encoding for the gate's per-row checks: the ids, and each id's character span in the text as two int64
    arrays (``(0, 0)`` for post-processor tokens, as in ``Encoding.offsets``). ``front``/``back``: how many
    post-processor tokens open/close ``ids``. ``encoding``: the full ``Encoding`` when one was made."""

    ids: list[int]
    starts: Any
    ends: Any
    front: int = 0
    back: int = 0
    encoding: Encoding | None = None

    @classmethod
    def of(cls, enc: Encoding) -> "TokenSpans":
        import numpy as np

        ids = enc.ids
        off = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        sm = enc.special_tokens_mask
        front = 0
        while front < len(ids) and sm[front]:
            front += 1
        back = 0
        while back < len(ids) - front and sm[len(ids) - 1 - back]:
            back += 1
        return cls(ids, off[:, 0].copy(), off[:, 1].copy(), front, back, enc)

    def offsets(self) -> list[tuple[int, int]]:
        return list(zip(self.starts.tolist(), self.ends.tolist()))

    def as_encoding(self, tokenizer: "Tokenizer") -> Any:
        """What the full checks read of an ``Encoding`` (ids, offsets, special-tokens mask, token strings), without
        encoding the text again."""
        if self.encoding is not None:
            return self.encoding
        return _SpanEncoding(self, tokenizer)


class _SpanEncoding:
    """An ``Encoding`` stand-in made from :class:`TokenSpans` (token strings looked up on first use)."""

    def __init__(self, sp: TokenSpans, tokenizer: "Tokenizer"):
        self.ids = sp.ids
        self.offsets = sp.offsets()
        n = len(sp.ids)
        self.special_tokens_mask = [1] * sp.front + [0] * (n - sp.front - sp.back) + [1] * sp.back
        self._tokenizer = tokenizer

    @property
    def tokens(self) -> list[str]:
        return [self._tokenizer.id_to_token(i) for i in self.ids]


#: texts on which the ids-only spans must equal the tokenizer's offsets before they are trusted
_OFFSET_PROBES = ["", "a", "Hello world", "  leading and trailing  ", "tabs\tand\nnewlines\n\n\n", "\r\n\r\n",
                  "naïve café — “quotes” ‘and’ …", "emoji 😀👍🏽 and ZWJ 👩‍👩‍👧", "中文字符和日本語のテキスト",
                  "e\u0301 combining", "\u200c\u200d\ufeff", "1234567890 3.14159", "a" * 300, "  \n \n  x",
                  "<not special> [INST] </s> <s>", "mixed😀中a\u0301  \n"]


def _byte_length_table(tk: _RustTokenizer):
    """Bytes each id stands for, when that is fixed: byte-level BPE with no normalizer and no added token that
    strips whitespace or is normalised. None otherwise."""
    import numpy as np

    from tokenizers import decoders, models

    model = tk.model
    if tk.normalizer is not None or not isinstance(model, models.BPE) or getattr(model, "byte_fallback", True) \
            or not isinstance(tk.decoder, decoders.ByteLevel):
        return None
    added = tk.get_added_tokens_decoder()
    if any(a.lstrip or a.rstrip or a.single_word or a.normalized for a in added.values()):
        return None
    vocab = tk.get_vocab(with_added_tokens=False)
    size = max([*vocab.values(), *added.keys(), -1]) + 1
    if not set("".join(vocab)) <= set(byte_decoder()):
        return None  # a character outside the byte alphabet: not a byte-level vocabulary
    table = np.zeros(size, dtype=np.int64)
    table[np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))] = np.fromiter(
        map(len, vocab), dtype=np.int64, count=len(vocab))
    for i, a in added.items():
        table[i] = len(a.content.encode("utf-8"))
    return table


def _load_table(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None


def _save_table(path: Path, table) -> None:
    import io

    import numpy as np

    from tmplcheck.fsutil import write_atomic_bytes

    buf = io.BytesIO()
    np.save(buf, table, allow_pickle=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic_bytes(path, buf.getvalue())
    except OSError:  # a read-only cache only costs the 0.2 s again next time
        pass


def byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte map (the inverse of its ``bytes_to_unicode``: each byte-level vocabulary
    character stands for one byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class SpanList(list):
    """``encode_batch_spans``' result: one :class:`TokenSpans` per text, and ``flat`` (a :class:`FlatSpans`, or None)
    for checks that run over the whole batch at once."""

    flat: "FlatSpans | None" = None


@dataclass
class FlatSpans:
    """The spans of a batch of texts as if the texts were one concatenated text (byte-level vocabularies, no
    post-processor tokens): token ``first[k] + i`` is token i of text k; ``starts``/``ends`` are its span in the
    concatenation's bytes, ``local_starts``/``local_ends`` in text k; ``base[k]`` is where text k starts.
    ``exact[k]``: text k is ASCII (bytes are characters) and its byte lengths add up to it, so its spans here are
    its character spans; the other texts' spans are made per text."""

    starts: Any
    ends: Any
    local_starts: Any
    local_ends: Any
    first: list[int]
    base: list[int]
    exact: list[bool]


def _flat_spans(texts: Sequence[str], ids: Sequence[list[int]], table) -> FlatSpans | None:
    """Every text's spans in one pass over the batch's ids (a few array operations per batch instead of per row);
    None when an id is past the table."""
    import itertools

    import numpy as np

    counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    total = int(counts.sum())
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total)
    if total and int(flat.max()) >= len(table):
        return None
    lens = table[flat]
    ends = np.cumsum(lens)
    starts = ends - lens
    first = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    row_base = np.concatenate(([0], ends))[first[:-1]]          # bytes before each text
    row_bytes = np.concatenate(([0], ends))[first[1:]] - row_base
    shift = np.repeat(row_base, counts)
    exact = [t.isascii() and n == len(t) for t, n in zip(texts, row_bytes.tolist())]
    return FlatSpans(starts, ends, starts - shift, ends - shift, first.tolist(), row_base.tolist(), exact)


def _spans_from_bytes(text: str, ids: list[int], table, front: int, back: int) -> TokenSpans | None:
    """Character spans of ``ids`` from the byte-length table; None when the lengths do not add up to the text."""
    import numpy as np

    a = np.asarray(ids, dtype=np.int64)   # ids are never negative (u32 in the tokenizer)
    try:
        lens = table[a]
    except IndexError:   # an id past the table (an added token the table does not know)
        return None
    if front:
        lens[:front] = 0
    if back:
        lens[len(lens) - back:] = 0
    ends = np.cumsum(lens)
    starts = ends - lens
    if text.isascii():
        if (ends[-1] if len(ends) else 0) != len(text):
            return None
        if front or back:
            nz = lens > 0
            starts, ends = np.where(nz, starts, 0), np.where(nz, ends, 0)
    else:
        b = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        if (ends[-1] if len(ends) else 0) != len(b):
            return None
        char_of = np.cumsum((b & 0xC0) != 0x80) - 1          # the character each byte belongs to
        nz = lens > 0
        starts = np.where(nz, char_of[np.minimum(starts, len(b) - 1)], 0)
        ends = np.where(nz, char_of[np.maximum(ends - 1, 0)] + 1, 0)
    return TokenSpans(ids, starts, ends, front, back)


# --------------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------------

def _from_dir(d: Path, *, name: str, gguf_path: Path | None = None, prefetch_llama_cpp: bool = False) -> Tokenizer:
    tj = d / "tokenizer.json"
    if not tj.is_file():
        raise TokenizerLoadError(f"{d} has no tokenizer.json (only fast tokenizers are supported; "
                                 "convert a slow one with transformers and save_pretrained)")
    cfg = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    stm = _read_json(d / "special_tokens_map.json") if (d / "special_tokens_map.json").is_file() else {}
    for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if _token_str(cfg.get(k)) is None and _token_str(stm.get(k)) is not None:
            cfg[k] = stm[k]
    gen = _read_json(d / "generation_config.json") if (d / "generation_config.json").is_file() else {}
    h = hashlib.sha256(tj.read_bytes())
    for f in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (d / f).is_file():
            h.update(f.encode() + b"\0" + (d / f).read_bytes())
    if gguf_path is None:
        meta = d / "tmplcheck-tokenizer.json"
        if meta.is_file():
            src = _read_json(meta).get("source")
            if src and Path(src).is_file():
                gguf_path = Path(src)
    if prefetch_llama_cpp and gguf_path is not None:
        prefetch_llama_cpp_tokenizer(gguf_path)   # loads while the HF tokenizer below does (llama.cpp frees the GIL)
    backend = _RustTokenizer.from_file(str(tj))
    return Tokenizer(backend, name=name, config=cfg, generation_config=gen, hf_dir=d, gguf_path=gguf_path,
                     fingerprint=h.hexdigest())


def _from_tokenizer_json(p: Path) -> Tokenizer:
    d = p.parent
    if any((d / f).is_file() for f in ("tokenizer_config.json", "special_tokens_map.json")) and p.name == \
            "tokenizer.json":
        return _from_dir(d, name=str(p))
    backend = _RustTokenizer.from_file(str(p))
    return Tokenizer(backend, name=str(p), config={}, hf_dir=None,
                     fingerprint=hashlib.sha256(p.read_bytes()).hexdigest())


def _from_hub(repo_id: str, revision: str | None) -> Tokenizer:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise TokenizerLoadError(f"{repo_id!r} looks like a hub id but huggingface_hub is not installed") from e
    try:
        d = snapshot_download(repo_id, revision=revision, allow_patterns=_TOKENIZER_FILES)
    except Exception as e:  # LocalEntryNotFoundError (offline, not cached), RepositoryNotFoundError, HTTP errors
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise TokenizerLoadError(f"hub id {repo_id!r}: could not get its tokenizer files"
                                 f"{' (HF_HUB_OFFLINE is set and it is not in the local cache)' if offline else ''}"
                                 f": {type(e).__name__}: {e}") from e
    return _from_dir(Path(d), name=repo_id)


def load_tokenizer(spec: str | os.PathLike, *, revision: str | None = None,
                   prefetch_llama_cpp: bool = False) -> Tokenizer:
    """Load a tokenizer from a built-in name, a directory, a tokenizer.json, a GGUF file or a hub id.

    ``prefetch_llama_cpp``: where the vocabulary has a GGUF file, start loading llama.cpp's tokenizer for it in a
    background thread (:func:`llama_cpp_tokenizer` takes it; the gate compares ids with it)."""
    from tmplcheck import assets

    pf = {"prefetch_llama_cpp": prefetch_llama_cpp}

    s = os.fspath(spec)
    tried: list[str] = []
    p = Path(s).expanduser()
    if p.is_dir():
        return _from_dir(p, name=s, **pf)
    tried.append("a directory")
    if p.is_file():
        if p.suffix == ".gguf":
            try:
                d = assets.gguf_tokenizer_dir(p)
            except assets.AssetError as e:
                raise TokenizerLoadError(f"{s}: {e}") from e
            return _from_dir(d, name=s, gguf_path=p, **pf)
        if p.suffix == ".json":
            if p.name == "tokenizer_config.json":
                return _from_dir(p.parent, name=s, **pf)
            try:
                return _from_tokenizer_json(p)
            except Exception as e:
                raise TokenizerLoadError(f"{s} is not a tokenizers tokenizer.json: {e}") from e
        raise TokenizerLoadError(f"{s} is a file but neither a tokenizer.json nor a .gguf")
    tried.append("a file")
    if s in assets.BUILTIN_TOKENIZERS or (s in assets.BUILTIN_TOKENIZERS.values()):
        try:
            return _from_dir(assets.builtin_tokenizer_dir(s), name=s, **pf)
        except assets.AssetError as e:
            raise TokenizerLoadError(str(e)) from e
    tried.append(f"a built-in name ({', '.join(sorted(assets.BUILTIN_TOKENIZERS))})")
    if _HUB_ID.match(s) and not s.startswith((".", "/")):
        return _from_hub(s, revision)
    tried.append("a hub id (owner/name)")
    raise TokenizerLoadError(f"cannot load a tokenizer from {s!r}: it is not " + ", nor ".join(tried))


# --------------------------------------------------------------------------------------------------------------
# llama.cpp's own tokenizer
# --------------------------------------------------------------------------------------------------------------

_LLAMA_LOCK = threading.Lock()
_LLAMA_READY = False
_LOG_CB = None


def _llama():
    global _LLAMA_READY, _LOG_CB
    import llama_cpp as L

    with _LLAMA_LOCK:
        if not _LLAMA_READY:
            _LOG_CB = L.llama_log_callback(lambda level, text, user: None)  # keep a reference: C holds it
            L.llama_log_set(_LOG_CB, ctypes.c_void_p(0))
            L.llama_backend_init()
            _LLAMA_READY = True
    return L


class LlamaCppTokenizer:
    """llama.cpp's tokenizer for a GGUF vocabulary (``vocab_only`` load, no weights, no context)."""

    def __init__(self, gguf_path: str | os.PathLike):
        L = _llama()
        self._L = L
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise FileNotFoundError(self.path)
        params = L.llama_model_default_params()
        params.vocab_only = True
        self._model = L.llama_model_load_from_file(os.fsencode(self.path), params)
        if not self._model:
            raise ValueError(f"llama.cpp could not load the vocabulary of {self.path}")
        self._vocab = L.llama_model_get_vocab(self._model)
        v = self._vocab
        self.n_tokens: int = L.llama_vocab_n_tokens(v)

        def opt(i: int) -> int | None:
            return i if i >= 0 else None

        self.bos_id, self.eos_id, self.eot_id = opt(L.llama_vocab_bos(v)), opt(L.llama_vocab_eos(v)), \
            opt(L.llama_vocab_eot(v))
        self.add_bos: bool = bool(L.llama_vocab_get_add_bos(v))
        self.add_eos: bool = bool(L.llama_vocab_get_add_eos(v))
        self._eog: frozenset[int] | None = None

    @property
    def eog_ids(self) -> frozenset[int]:
        """llama.cpp's end-of-generation ids (what a llama.cpp server stops on)."""
        if self._eog is None:
            self._eog = frozenset(i for i in range(self.n_tokens) if self._L.llama_vocab_is_eog(self._vocab, i))
        return self._eog

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        L = self._L
        b = text.encode("utf-8")
        cap = len(b) + 8
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self._vocab, b, len(b), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self._vocab, b, len(b), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def strip_attrs(self) -> dict[int, tuple[bool, bool]]:
        """id -> (lstrip, rstrip) for the tokens llama.cpp strips whitespace around."""
        L = self._L
        out = {}
        for i in range(self.n_tokens):
            a = L.llama_vocab_get_attr(self._vocab, i)
            ls, rs = bool(a & L.LLAMA_TOKEN_ATTR_LSTRIP), bool(a & L.LLAMA_TOKEN_ATTR_RSTRIP)
            if ls or rs:
                out[i] = (ls, rs)
        return out

    def token_text(self, i: int) -> str:
        return self._L.llama_vocab_get_text(self._vocab, i).decode("utf-8", "replace")

    def piece(self, i: int, *, special: bool = True) -> bytes:
        L = self._L
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self._vocab, i, buf, len(buf), 0, special)
        return buf.raw[:max(n, 0)]

    def close(self) -> None:
        if getattr(self, "_model", None):
            self._L.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaCppTokenizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


@dataclass(frozen=True)
class IdDivergence:
    """Where two tokenizations of the same text first part ways."""

    index: int                 # first differing position
    hf_ids: tuple[int, ...]    # a window of HF ids from ``index``
    other_ids: tuple[int, ...]
    hf_tokens: tuple[str, ...]
    other_tokens: tuple[str, ...]
    char_offset: int | None    # where in the text the HF token at ``index`` starts (None past the end)
    hf_len: int
    other_len: int

    def describe(self) -> str:
        return (f"ids differ at token {self.index} (char {self.char_offset}): HF {list(self.hf_ids)} "
                f"{list(self.hf_tokens)} vs llama.cpp {list(self.other_ids)} {list(self.other_tokens)}; "
                f"lengths {self.hf_len} vs {self.other_len}")


def compare_ids(hf_ids: Sequence[int], other_ids: Sequence[int], *, tokenizer: Tokenizer | None = None,
                offsets: Sequence[tuple[int, int]] | None = None, window: int = 4) -> IdDivergence | None:
    """None when equal, else the first divergence with a few ids either side of it."""
    hf_ids, other_ids = list(hf_ids), list(other_ids)
    if hf_ids == other_ids:
        return None
    i = 0
    while i < min(len(hf_ids), len(other_ids)) and hf_ids[i] == other_ids[i]:
        i += 1
    a, b = hf_ids[i:i + window], other_ids[i:i + window]

    def names(ids):
        if tokenizer is None:
            return tuple(str(x) for x in ids)
        return tuple(tokenizer.id_to_token(x) or f"<{x}>" for x in ids)

    char = offsets[i][0] if offsets is not None and i < len(offsets) else None
    return IdDivergence(i, tuple(a), tuple(b), names(a), names(b), char, len(hf_ids), len(other_ids))


_LC_CACHE: dict[str, LlamaCppTokenizer] = {}
_LC_LOADING: dict[str, threading.Thread] = {}
_LC_FAILED: dict[str, BaseException] = {}
_LC_LOCK = threading.Lock()


def prefetch_llama_cpp_tokenizer(gguf_path: str | os.PathLike) -> None:
    """Start loading llama.cpp's tokenizer for ``gguf_path`` in a background thread (once per file; a no-op when it
    is loaded or loading). llama.cpp releases the GIL while it reads the vocabulary, so this overlaps with other
    start-up work; :func:`llama_cpp_tokenizer` waits for it."""
    key = str(gguf_path)
    with _LC_LOCK:
        if key in _LC_CACHE or key in _LC_LOADING:
            return

        def load() -> None:
            try:
                _LC_CACHE[key] = LlamaCppTokenizer(key)
            except BaseException as e:  # noqa: BLE001 - raised again where the tokenizer is asked for
                _LC_FAILED[key] = e

        t = _LC_LOADING[key] = threading.Thread(target=load, name="tmplcheck-llamacpp-load", daemon=True)
        t.start()
    global _TRIMMED
    _TRIMMED = False   # trim again after this load


def before_fork() -> None:
    """Ready this process to fork the gate's workers: wait for every llama.cpp tokenizer still loading (no thread
    may be inside llama.cpp at the fork), then hand the heap that loading freed back to the system (the tokenizer
    files' parse leaves tens of MiB of freed heap resident; the workers would start with those pages, shared but
    counted in every worker's RSS)."""
    global _TRIMMED
    for t in list(_LC_LOADING.values()):
        t.join()
    if not _TRIMMED:   # once after the loads (``TokenStage.check`` gets here once per row)
        _TRIMMED = True
        _trim_heap()


_TRIMMED = False


def _trim_heap() -> None:
    """glibc's ``malloc_trim(0)``; elsewhere there is nothing to call."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def llama_cpp_tokenizer(gguf_path: str | os.PathLike) -> LlamaCppTokenizer:
    """llama.cpp's tokenizer for ``gguf_path``, loaded once per file (taking a prefetched one)."""
    key = str(gguf_path)
    t = _LC_LOADING.get(key)
    if t is not None:
        t.join()
        with _LC_LOCK:
            _LC_LOADING.pop(key, None)
    if key in _LC_FAILED:
        raise _LC_FAILED.pop(key)
    with _LC_LOCK:
        lc = _LC_CACHE.get(key)
        if lc is None:
            lc = _LC_CACHE[key] = LlamaCppTokenizer(key)
    return lc


def llama_cpp_tokenizer_for(tokenizer: Tokenizer) -> LlamaCppTokenizer | None:
    """llama.cpp's tokenizer for the GGUF this tokenizer came from (cached per file), or None."""
    if tokenizer.gguf_path is None:
        return None
    return llama_cpp_tokenizer(tokenizer.gguf_path)


def compare_with_llama_cpp(tokenizer: Tokenizer, text: str, *, add_special_tokens: bool = True,
                           llama: LlamaCppTokenizer | None = None) -> IdDivergence | None:
    """Tokenize ``text`` with HF and with llama.cpp (special tokens parsed) and report the first divergence.

    Raises ValueError when the tokenizer has no GGUF vocabulary to compare with.
    """
    lc = llama or llama_cpp_tokenizer_for(tokenizer)
    if lc is None:
        raise ValueError(f"tokenizer {tokenizer.name!r} has no GGUF vocabulary for llama.cpp")
    enc = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    other = lc.encode(text, add_special=add_special_tokens, parse_special=True)
    return compare_ids(enc.ids, other, tokenizer=tokenizer, offsets=enc.offsets)
