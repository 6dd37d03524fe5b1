"""Real vocabularies and upstream chat templates, fetched once from the package index into a local cache.

The llama-cpp-python sdist ships llama.cpp's vocab-only GGUF files (``vendor/llama.cpp/models/ggml-vocab-*.gguf``
with HF's own tokenizations beside them as ``.inp``/``.out``) and ~70 real model chat templates
(``vendor/llama.cpp/models/templates/*.jinja``). Nothing of them is committed: ``tmplcheck assets fetch`` (run by
the set-up script) downloads the sdist with pip, unpacks only those folders, and later steps convert the
vocabularies into HF tokenizer directories next to them. llama.cpp's own HF → GGUF converter
(``convert_hf_to_gguf.py`` with its ``conversion`` package and ``gguf-py``) is unpacked from the same sdist for
``tmplcheck export``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
_MODELS = "vendor/llama.cpp/models/"


class AssetError(RuntimeError):
    pass


def cache_root() -> Path:
    """``$TMPLCHECK_CACHE``, else ``$XDG_CACHE_HOME/tmplcheck``, else ``~/.cache/tmplcheck``."""
    env = os.environ.get("TMPLCHECK_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tmplcheck"


def sdist_dir() -> Path:
    """The unpacked ``models/`` folder of the sdist (vocab GGUFs and ``templates/``)."""
    return cache_root() / f"llama-cpp-python-{SDIST_VERSION}" / "models"


def upstream_templates_dir() -> Path:
    return sdist_dir() / "templates"


def vocab_gguf(name: str) -> Path:
    """Path of ``ggml-vocab-{name}.gguf`` (e.g. ``llama-bpe``), fetching the sdist first if needed."""
    p = ensure_sdist() / f"ggml-vocab-{name}.gguf"
    if not p.is_file():
        have = sorted(x.name[len("ggml-vocab-"):-len(".gguf")] for x in sdist_dir().glob("ggml-vocab-*.gguf"))
        raise AssetError(f"no vocabulary {name!r} in the llama-cpp-python sdist (have: {', '.join(have)})")
    return p


def have_sdist() -> bool:
    return (sdist_dir() / ".complete").is_file()


def download_sdist(into: str | os.PathLike) -> Path:
    """``pip download --no-binary`` the pinned llama-cpp-python sdist into the folder ``into``; its tarball's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(into), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = list(Path(into).glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise AssetError(f"could not download the {SDIST_NAME} {SDIST_VERSION} sdist from the package index:\n"
                         f"{proc.stderr.strip()[-2000:]}")
    return found[0]


def unpack_sdist(dest: Path, pick, required: tuple[str, ...] = (), tarball: str | os.PathLike | None = None) -> Path:
    """Unpack the files of the pinned sdist that ``pick`` names into ``dest``, once: ``pick(path in the sdist
    without its top folder)`` gives the path under ``dest``, or None to leave the file out. From ``tarball``, else
    downloading the sdist with pip. Written to a staging folder and moved into place whole (``.complete`` inside),
    so a crash or a concurrent run never leaves half a folder; AssetError names any ``required`` file missing."""
    if (dest / ".complete").is_file():
        return dest
    with tempfile.TemporaryDirectory(prefix="tmplcheck-sdist-") as tmp:
        sdist = Path(tarball) if tarball else download_sdist(tmp)
        staging = dest.parent / f".staging-{dest.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(sdist) as tf:
            for m in tf:
                rel = m.name.split("/", 1)[1] if "/" in m.name else ""
                sub = pick(rel) if m.isfile() else None
                if sub is None:
                    continue
                target = staging / sub
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        missing = [r for r in required if not (staging / r).is_file()]
        if missing:
            shutil.rmtree(staging, ignore_errors=True)
            raise AssetError(f"the {SDIST_NAME} {SDIST_VERSION} sdist lacks {', '.join(missing)}")
        (staging / ".complete").write_text(f"{SDIST_NAME}=={SDIST_VERSION}\n")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, dest)
    return dest


def _models_file(rel: str) -> str | None:
    """The sdist's vocab files (the models folder's top) and its templates folder."""
    if not rel.startswith(_MODELS):
        return None
    sub = rel[len(_MODELS):]
    return sub if "/" not in sub or sub.startswith("templates/") else None


def ensure_sdist(tarball: str | os.PathLike | None = None) -> Path:
    """Fetch (``pip download --no-binary``) and unpack the sdist's models folder into the cache, once; the
    converter and the Jinja engine's sources come from the same tarball while it is here."""
    dest = sdist_dir()
    if have_sdist():
        return dest
    with tempfile.TemporaryDirectory(prefix="tmplcheck-sdist-") as tmp:
        tarball = tarball or download_sdist(tmp)
        unpack_sdist(dest, _models_file, tarball=tarball)
        try:   # llama.cpp's GGUF converter, from the same tarball (``tmplcheck export`` runs it)
            ensure_converter(tarball)
        except Exception:  # noqa: BLE001 - optional here; ``prepare`` and ``export`` fetch it themselves
            pass
        try:   # llama.cpp's Jinja engine sources, from the same tarball (validator/llamacpp_jinja.py builds them)
            from tmplcheck.validator.llamacpp_jinja import ensure_sources

            ensure_sources(tarball)
        except Exception:  # noqa: BLE001 - optional; building the engine later fetches them itself
            pass
    return dest


# --------------------------------------------------------------------------------------------------------------
# llama.cpp's own HF → GGUF converter (``tmplcheck export``)
# --------------------------------------------------------------------------------------------------------------
#
# ``convert_hf_to_gguf.py`` with the ``conversion`` package it imports and the ``gguf-py`` it puts first on its own
# path (the converter and its gguf-py move together; the pypi ``gguf`` may be older than the converter expects).

_LLAMA_CPP = "vendor/llama.cpp/"
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")


def converter_dir() -> Path:
    return cache_root() / f"llama-cpp-python-{SDIST_VERSION}" / "convert"


def converter_script() -> Path:
    """``convert_hf_to_gguf.py`` of the pinned sdist, unpacked into the cache on first use."""
    return ensure_converter() / "convert_hf_to_gguf.py"


def _converter_file(rel: str) -> str | None:
    sub = rel[len(_LLAMA_CPP):] if rel.startswith(_LLAMA_CPP) else ""
    return sub if any(sub == p or (p.endswith("/") and sub.startswith(p)) for p in _CONVERTER_PARTS) else None


def ensure_converter(tarball: str | os.PathLike | None = None) -> Path:
    """Unpack llama.cpp's converter (script, ``conversion/``, ``gguf-py/``) from the pinned sdist into the cache,
    once (from ``tarball``, else downloading the sdist with pip)."""
    return unpack_sdist(converter_dir(), _converter_file,
                        ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py"), tarball)


# --------------------------------------------------------------------------------------------------------------
# Vocabularies → HF tokenizer directories
# --------------------------------------------------------------------------------------------------------------
#
# transformers can build a fast tokenizer from a GGUF's ``tokenizer.ggml.*`` arrays; the result is saved as a
# plain HF tokenizer directory (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
# generation_config.json) so that every later load needs only the ``tokenizers`` library. The conversion is not
# exact for every vocabulary out of the box, so a few corrections are applied, each proven by the ``.inp``/``.out``
# pairs (HF's own tokenizations of the original models) that sit next to the vocabularies:
#   * Llama 3 (``tokenizer.ggml.pre == "llama-bpe"``): Meta's tokenizer.json has ``ignore_merges: true`` (a
#     pre-token that is itself a vocabulary entry is not merged piecewise: " Việt" is one id); and its
#     post-processor is ByteLevel + TemplateProcessing adding ``<|begin_of_text|>``.
#   * SentencePiece-style BPE that came out with a Metaspace pre-tokenizer (Llama 2): Meta's tokenizer.json uses
#     the "legacy" normalizer Prepend("▁") + Replace(" ", "▁"), which differs on leading spaces (" " → 259).
#   * Ids past the GGUF's vocabulary that the converter invents (e.g. an extra ``<|endoftext|>`` = 128256 for
#     Llama 3) are dropped.
#   * The post-processor adds BOS/EOS exactly when llama.cpp would (the GGUF's add_bos_token/add_eos_token flags,
#     else llama.cpp's default for the vocabulary type), which matches the original HF tokenizers.
#   * The stop set (generation_config.json ``eos_token_id``) is llama.cpp's end-of-generation set for the vocabulary
#     plus known generation-config ids (Meta's Llama 3.1: 128001, 128008, 128009).

import contextlib
import hashlib
import json
import time
import types
from dataclasses import dataclass, field

# built-in tokenizer name -> vocabulary name (ggml-vocab-<vocab>.gguf)
BUILTIN_TOKENIZERS: dict[str, str] = {
    "llama-3": "llama-bpe",
    "llama-2": "llama-spm",
    "phi-3": "phi-3",
    "qwen2": "qwen2",
    "qwen3.5": "qwen35",
    "gemma-4": "gemma-4",
    "gpt-2": "gpt-2",
}
# Only vocabularies whose conversion reproduces every .inp/.out case get a built-in name. Not exact with
# transformers' GGUF converter (python -m tmplcheck.assets prepare --vocab all prints the table): command-r,
# deepseek-coder, deepseek-llm, falcon, mpt, refact, starcoder (1-9 of 46 cases differ); bert-bge cannot be
# converted at all ('bert' vocabularies are unsupported); aquila, baichuan, gpt-neox, nomic-bert-moe have no
# .inp/.out to prove them.
# vocabularies converted by a bare ``prepare``
DEFAULT_VOCABS: tuple[str, ...] = ("llama-bpe", "llama-spm", "phi-3", "qwen2", "gemma-4", "qwen35", "gpt-2")

# generation-config eos ids of the original models that the GGUF's end-of-generation set does not carry
_EXTRA_STOP_IDS: dict[str, tuple[int, ...]] = {
    "llama-bpe": (128001, 128008, 128009),  # meta-llama/Llama-3.1-8B-Instruct generation_config.json
}

VOCAB_TEST_SEPARATOR = "\n__ggml_vocab_test__\n"
_META_FILE = "tmplcheck-tokenizer.json"
_CONVERTER_VERSION = 2


def tokenizers_root() -> Path:
    return cache_root() / "tokenizers"


def converted_dir(vocab: str) -> Path:
    """Where the HF tokenizer directory of ``ggml-vocab-{vocab}.gguf`` is cached."""
    return tokenizers_root() / vocab


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_vocab_tests(gguf_path: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """The (text, HF ids) cases of ``<gguf>.inp``/``<gguf>.out``, parsed as llama.cpp's test-tokenizer-0 does.

    The ``.inp`` holds the texts separated by a ``__ggml_vocab_test__`` marker line; the ``.out`` one line of
    space-separated ids per text (encoded without special tokens). Returns [] when the files are absent.
    """
    inp, out = Path(f"{gguf_path}.inp"), Path(f"{gguf_path}.out")
    if not (inp.is_file() and out.is_file()):
        return []
    raw = inp.read_bytes().decode("utf-8")
    texts: list[str] = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(VOCAB_TEST_SEPARATOR, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(VOCAB_TEST_SEPARATOR)
    lines = out.read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(texts) != len(lines):
        raise AssetError(f"{inp.name} has {len(texts)} texts but {out.name} has {len(lines)} lines")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


def verify_tokenizer_json(tokenizer_json: str | os.PathLike, gguf_path: str | os.PathLike) -> tuple[int, list[dict]]:
    """Encode every ``.inp`` case with the tokenizer (no special tokens); return (cases, mismatches)."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(tokenizer_json))
    cases = read_vocab_tests(gguf_path)
    bad = []
    for i, (text, want) in enumerate(cases):
        got = tk.encode(text, add_special_tokens=False).ids
        if got != want:
            bad.append({"case": i, "text": text, "expected": want, "got": got})
    return len(cases), bad


@dataclass
class GGUFVocabInfo:
    """What llama.cpp itself says about a vocabulary (read with llama-cpp-python, vocab_only)."""

    n_tokens: int
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    add_bos: bool
    add_eos: bool
    eog_ids: list[int] = field(default_factory=list)
    pre: str | None = None
    model: str | None = None
    strip: dict[int, tuple[bool, bool]] = field(default_factory=dict)  # id -> (lstrip, rstrip) per llama.cpp


def gguf_vocab_info(gguf_path: str | os.PathLike) -> GGUFVocabInfo:
    from tmplcheck.validator.gguf_header import cached_header
    from tmplcheck.validator.tokenizer import LlamaCppTokenizer

    h = cached_header(gguf_path)   # the header and key/values only (validator/gguf_header.py)
    with LlamaCppTokenizer(gguf_path) as lc:
        return GGUFVocabInfo(n_tokens=lc.n_tokens, bos_id=lc.bos_id, eos_id=lc.eos_id, eot_id=lc.eot_id,
                             add_bos=lc.add_bos, add_eos=lc.add_eos, eog_ids=sorted(lc.eog_ids),
                             pre=h.get("tokenizer.ggml.pre"), model=h.get("tokenizer.ggml.model"),
                             strip=lc.strip_attrs())


@contextlib.contextmanager
def header_only_transformers(gguf_path: str | os.PathLike):
    """While transformers builds a tokenizer from ``gguf_path``, it reads the file's metadata from our header-only
    reader (``validator/gguf_header.py``) instead of its own: no memory map of the file, no walk over the tensor
    table, no torch import. transformers 5 reads GGUF metadata through ``transformers.integrations.gguf.reader``'s
    ``read_gguf_metadata`` (a stand-in module is put in its place, returning what it returns: requested string
    arrays as lists, other string arrays as their count, numbers as lists); transformers 4 through
    ``gguf.GGUFReader`` (a metadata-only stand-in with no tensors is put in its place). Both are restored after."""
    from tmplcheck.validator.gguf_header import HeaderReader, cached_header

    header = cached_header(gguf_path)
    target = os.path.realpath(gguf_path)

    def read_gguf_metadata(path, string_arrays=()):
        h = header if os.path.realpath(path) == target else cached_header(path)
        meta = {}
        for k, v in h.fields.items():
            if h.types[k][0] == 9 and h.types[k][-1] == 8 and k not in string_arrays:
                v = len(v)
            meta[k] = v
        if "general.architecture" not in meta:
            raise ValueError(f"{path} has no `general.architecture` in its metadata.")
        return meta, ()

    name = "transformers.integrations.gguf.reader"
    saved_mod = sys.modules.get(name)
    stand_in = types.ModuleType(name)
    stand_in.read_gguf_metadata = read_gguf_metadata
    sys.modules[name] = stand_in
    try:
        import gguf
    except ImportError:  # pragma: no cover - a dependency
        gguf = None
    saved_reader = getattr(gguf, "GGUFReader", None)
    if gguf is not None:
        gguf.GGUFReader = lambda path, *a, **k: HeaderReader(path)
    try:
        yield header
    finally:
        if saved_mod is not None:
            sys.modules[name] = saved_mod
        else:
            sys.modules.pop(name, None)
        if gguf is not None:
            gguf.GGUFReader = saved_reader


def _template_processing(bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> dict:
    single: list[dict] = []
    pair: list[dict] = []
    special: dict[str, dict] = {}
    if bos:
        single.append({"SpecialToken": {"id": bos[0], "type_id": 0}})
        pair.append({"SpecialToken": {"id": bos[0], "type_id": 0}})
        special[bos[0]] = {"id": bos[0], "ids": [bos[1]], "tokens": [bos[0]]}
    single.append({"Sequence": {"id": "A", "type_id": 0}})
    pair.append({"Sequence": {"id": "A", "type_id": 0}})
    if eos:
        single.append({"SpecialToken": {"id": eos[0], "type_id": 0}})
        pair.append({"SpecialToken": {"id": eos[0], "type_id": 0}})
        special[eos[0]] = {"id": eos[0], "ids": [eos[1]], "tokens": [eos[0]]}
    if bos:
        pair.append({"SpecialToken": {"id": bos[0], "type_id": 1}})
    pair.append({"Sequence": {"id": "B", "type_id": 1}})
    if eos:
        pair.append({"SpecialToken": {"id": eos[0], "type_id": 1}})
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}


def _fix_tokenizer_json(tj: dict, info: GGUFVocabInfo, notes: list[str]) -> dict:
    model = tj["model"]
    vocab = model.get("vocab")
    n = info.n_tokens
    # 1. ids the converter invented past the GGUF vocabulary
    extra = [a for a in tj.get("added_tokens", []) if a["id"] >= n]
    if extra:
        tj["added_tokens"] = [a for a in tj["added_tokens"] if a["id"] < n]
        if isinstance(vocab, dict):
            for a in extra:
                if vocab.get(a["content"]) == a["id"]:
                    del vocab[a["content"]]
        shown = ", ".join(f"{a['content']}={a['id']}" for a in extra[:3])
        notes.append(f"dropped {len(extra)} ids past the vocabulary: {shown}{', ...' if len(extra) > 3 else ''}")
    # 2. Llama 3: ignore_merges, as in Meta's tokenizer.json
    if info.pre == "llama-bpe" and model.get("type") == "BPE" and not model.get("ignore_merges"):
        model["ignore_merges"] = True
        notes.append("BPE ignore_merges=true (Meta's Llama 3 tokenizer.json)")
    # 3. SentencePiece BPE with Metaspace pre-tokenizer -> Meta's legacy normalizer
    pre = tj.get("pre_tokenizer") or {}
    if info.model == "llama" and pre.get("type") == "Metaspace" and tj.get("normalizer") is None:
        tj["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        tj["pre_tokenizer"] = None
        notes.append("Metaspace pre-tokenizer -> Prepend+Replace normalizer (Meta's Llama 2 tokenizer.json)")
    # 4. lstrip/rstrip of added tokens as llama.cpp has them (it mirrors the original tokenizer.json: Phi-3's
    #    <|user|>, <|end|>, ... eat the whitespace after them)
    changed = []
    for a in tj.get("added_tokens", []):
        ls, rs = info.strip.get(a["id"], (False, False))
        if (bool(a.get("lstrip")), bool(a.get("rstrip"))) != (ls, rs):
            a["lstrip"], a["rstrip"] = ls, rs
            changed.append(a["content"])
    if changed:
        notes.append(f"lstrip/rstrip from llama.cpp on {len(changed)} added tokens ({', '.join(changed[:3])}"
                     f"{', ...' if len(changed) > 3 else ''})")
    # 5. post-processor: BOS/EOS exactly when llama.cpp adds them
    id_to_content = {a["id"]: a["content"] for a in tj.get("added_tokens", [])}
    if isinstance(vocab, dict):
        inv = {i: t for t, i in vocab.items()}
    else:  # Unigram: list of [piece, score]
        inv = {i: p[0] for i, p in enumerate(vocab or [])}

    def tok(i):
        if i is None or i < 0:
            return None
        s = id_to_content.get(i, inv.get(i))
        return (s, i) if s is not None else None

    tp = _template_processing(tok(info.bos_id) if info.add_bos else None, tok(info.eos_id) if info.add_eos else None)
    if tj.get("pre_tokenizer") and "ByteLevel" in json.dumps(tj["pre_tokenizer"]):
        post = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}, tp]}
    else:
        post = tp
    if tj.get("post_processor") != post:
        tj["post_processor"] = post
        notes.append(f"post-processor adds BOS={info.add_bos} EOS={info.add_eos} (llama.cpp's flags)")
    return tj


@dataclass
class ConvertResult:
    vocab: str
    path: Path | None
    status: str             # "converted", "cached", "failed"
    exact: bool | None      # None: no .inp/.out to prove it
    cases: int = 0
    mismatches: int = 0
    seconds: float = 0.0
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def convert_gguf(gguf_path: str | os.PathLike, dest: str | os.PathLike, *, label: str | None = None) -> ConvertResult:
    """Convert a (vocab-only is enough) GGUF's tokenizer into an HF tokenizer directory at ``dest``.

    Atomic: the directory is built next to ``dest`` and renamed into place. Needs transformers (+ gguf).
    Raises AssetError when transformers cannot build a tokenizer from the file.
    """
    gguf_path, dest = Path(gguf_path), Path(dest)
    label = label or gguf_path.stem
    t0 = time.monotonic()
    info = gguf_vocab_info(gguf_path)
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError as e:  # pragma: no cover - environment problem
        raise AssetError("converting a GGUF vocabulary needs transformers (pip install 'tmplcheck[hf]')") from e
    import logging
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        with header_only_transformers(gguf_path):
            hf = PreTrainedTokenizerFast.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:  # transformers raises ValueError/KeyError/... for unsupported vocabularies
        raise AssetError(f"transformers cannot build a tokenizer from {gguf_path.name}: {e}") from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        hf.save_pretrained(str(staging))
        notes: list[str] = []
        tj_path = staging / "tokenizer.json"
        tj = _fix_tokenizer_json(json.loads(tj_path.read_text(encoding="utf-8")), info, notes)
        tj_path.write_text(json.dumps(tj, ensure_ascii=False, indent=1), encoding="utf-8")
        (staging / "chat_template.jinja").unlink(missing_ok=True)  # templates come from the template registry

        def content(i):
            if i is None or i < 0:
                return None
            from tokenizers import Tokenizer
            return Tokenizer.from_file(str(tj_path)).id_to_token(i)

        bos, eos = content(info.bos_id), content(info.eos_id)
        cfg_path = staging / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        cfg.pop("chat_template", None)
        cfg.update({"bos_token": bos, "eos_token": eos, "add_bos_token": info.add_bos,
                    "add_eos_token": info.add_eos, "tokenizer_class": "PreTrainedTokenizerFast"})
        cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
        stm = {k: v for k, v in (("bos_token", bos), ("eos_token", eos),
                                 ("pad_token", cfg.get("pad_token")), ("unk_token", cfg.get("unk_token")))
               if isinstance(v, str)}
        (staging / "special_tokens_map.json").write_text(json.dumps(stm, ensure_ascii=False, indent=2),
                                                         encoding="utf-8")
        stop = []
        for i in [info.eos_id, *info.eog_ids, *_EXTRA_STOP_IDS.get(info.pre or "", ())]:
            if i is not None and i >= 0 and i not in stop:
                stop.append(i)
        gen = {"bos_token_id": info.bos_id, "eos_token_id": stop}
        (staging / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")
        cases, bad = verify_tokenizer_json(tj_path, gguf_path)
        exact = None if cases == 0 else not bad
        meta = {"converter_version": _CONVERTER_VERSION, "source": str(gguf_path), "fingerprint": gguf_fingerprint(gguf_path),
                "label": label, "pre": info.pre, "model": info.model, "n_tokens": info.n_tokens,
                "add_bos": info.add_bos, "add_eos": info.add_eos, "stop_ids": stop, "notes": notes,
                "verified": {"cases": cases, "mismatches": bad[:20], "exact": exact}}
        (staging / _META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
        os.chmod(staging, 0o755)
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        try:
            if dest.exists():
                os.replace(dest, old)
            os.replace(staging, dest)
        except OSError:
            # another process finished the same conversion in between: keep its result
            if not _is_current(dest):
                raise
            shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ConvertResult(label, dest, "converted", exact, cases, len(bad), time.monotonic() - t0, notes=notes)


def converted_meta(path: str | os.PathLike) -> dict | None:
    p = Path(path) / _META_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        return None


def _is_current(path: Path) -> bool:
    meta = converted_meta(path)
    return bool(meta and meta.get("converter_version") == _CONVERTER_VERSION and (path / "tokenizer.json").is_file())


def prepare_vocab(vocab: str, *, force: bool = False) -> ConvertResult:
    """Convert ``ggml-vocab-{vocab}.gguf`` into :func:`converted_dir` once (idempotent)."""
    dest = converted_dir(vocab)
    if not force and _is_current(dest):
        meta = converted_meta(dest) or {}
        ver = meta.get("verified", {})
        return ConvertResult(vocab, dest, "cached", ver.get("exact"), ver.get("cases", 0),
                             len(ver.get("mismatches", [])), notes=meta.get("notes", []))
    try:
        return convert_gguf(vocab_gguf(vocab), dest, label=vocab)
    except AssetError as e:
        return ConvertResult(vocab, None, "failed", None, reason=str(e))


def builtin_tokenizer_dir(name: str) -> Path:
    """The cached HF tokenizer directory of a built-in tokenizer name (or a vocabulary name), converting once."""
    vocab = BUILTIN_TOKENIZERS.get(name, name)
    if vocab not in BUILTIN_TOKENIZERS.values() and not (sdist_dir() / f"ggml-vocab-{vocab}.gguf").is_file():
        raise AssetError(f"unknown built-in tokenizer {name!r} (have: {', '.join(sorted(BUILTIN_TOKENIZERS))})")
    res = prepare_vocab(vocab)
    if res.status == "failed" or res.path is None:
        raise AssetError(f"built-in tokenizer {name!r} ({vocab}) is unavailable: {res.reason}")
    return res.path


_GGUF_INDEX = "gguf-index.json"


def _stat_key(p: Path) -> str:
    """The file's identity for the fingerprint index: real path, size, mtime, and the sha256 of its first MiB."""
    st = p.stat()
    with open(p, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    return f"{os.path.realpath(p)}|{st.st_size}|{st.st_mtime_ns}|{head}"


def gguf_fingerprint(gguf_path: str | os.PathLike) -> str:
    """What a GGUF's converted tokenizer is cached by: the sha256 of the file's header and key/values (every byte the
    conversion reads: vocabulary, merges, scores, token types, special ids and flags). The tensor section is never
    read. Computing it walks the metadata (~0.2 s for a 128k vocabulary), so it is remembered in
    ``tokenizers/gguf-index.json`` under the file's real path, size, mtime and the sha256 of its first MiB: a file
    seen before costs a stat and a 1 MiB read."""
    from tmplcheck.fsutil import write_atomic
    from tmplcheck.validator.gguf_header import GGUFHeaderError, fingerprint

    p = Path(gguf_path)
    index_path = tokenizers_root() / _GGUF_INDEX
    try:
        key = _stat_key(p)
    except OSError as e:
        raise AssetError(f"{gguf_path}: cannot read: {e}") from None
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if not isinstance(index, dict):
        index = {}
    fp = index.get(key)
    if isinstance(fp, str) and len(fp) == 64:
        return fp
    try:
        fp = fingerprint(p)
    except (GGUFHeaderError, OSError) as e:
        raise AssetError(f"{gguf_path}: not a readable GGUF file: {e}") from None
    index = {k: v for k, v in index.items() if not k.startswith(key.split("|", 1)[0] + "|")}   # one entry a path
    index[key] = fp
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(index_path, [json.dumps(index, indent=0, sort_keys=True)])
    except OSError:
        pass   # a read-only cache: the fingerprint is computed again next time
    return fp


def gguf_tokenizer_dir(gguf_path: str | os.PathLike) -> Path:
    """Convert any GGUF file's tokenizer once, cached by :func:`gguf_fingerprint` (header and key/values only)."""
    sha = gguf_fingerprint(gguf_path)
    dest = tokenizers_root() / f"gguf-{sha[:24]}"
    if _is_current(dest):
        return dest
    convert_gguf(gguf_path, dest, label=Path(gguf_path).name)
    return dest


def _print_table(results: list[ConvertResult], out=None) -> None:
    out = out or sys.stdout
    print(f"{'vocab':<16} {'status':<10} {'exact':<7} {'cases':>5} {'bad':>4} {'secs':>6}  notes / reason", file=out)
    for r in results:
        exact = {True: "yes", False: "NO", None: "-"}[r.exact]
        why = r.reason or "; ".join(r.notes)
        print(f"{r.vocab:<16} {r.status:<10} {exact:<7} {r.cases:>5} {r.mismatches:>4} {r.seconds:>6.1f}  {why}",
              file=out)
        if r.path:
            print(f"{'':<16} -> {r.path}", file=out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tmplcheck.assets",
                                 description="Fetch the llama-cpp-python sdist and convert its vocabularies.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download and unpack the sdist's models folder into the cache")
    pp = sub.add_parser("prepare", help="fetch, then convert vocabularies into HF tokenizer directories")
    pp.add_argument("--vocab", action="append", metavar="NAME",
                    help=f"vocabulary to convert (repeatable; default: {', '.join(DEFAULT_VOCABS)}; 'all' for all)")
    pp.add_argument("--force", action="store_true", help="convert again even when a current cache exists")
    args = ap.parse_args(argv)
    try:
        root = ensure_sdist()
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sdist models: {root}")
    try:
        print(f"GGUF converter: {ensure_converter()}")
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "fetch":
        return 0
    vocabs = args.vocab or list(DEFAULT_VOCABS)
    if "all" in vocabs:
        vocabs = sorted(x.name[len("ggml-vocab-"):-len(".gguf")] for x in root.glob("ggml-vocab-*.gguf"))
    results = [prepare_vocab(v, force=args.force) for v in vocabs]
    _print_table(results)
    return 1 if any(r.status == "failed" or r.exact is False for r in results if r.vocab in DEFAULT_VOCABS) else 0


if __name__ == "__main__":
    sys.exit(main())
