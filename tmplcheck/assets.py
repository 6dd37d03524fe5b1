"""Real vocabularies and upstream chat templates, fetched once from the package index into a local cache.

The llama-cpp-python sdist ships llama.cpp's vocab-only GGUF files (``vendor/llama.cpp/models/ggml-vocab-*.gguf``
with HF's own tokenizations beside them as ``.inp``/``.out``) and ~70 real model chat templates
(``vendor/llama.cpp/models/templates/*.jinja``). Nothing of them is committed: ``tmplcheck assets fetch`` (run by
the set-up script) downloads the sdist with pip, unpacks only those folders, and later steps convert the
vocabularies into HF tokenizer directories next to them.
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


def ensure_sdist(tarball: str | os.PathLike | None = None) -> Path:
    """Fetch (``pip download --no-binary``) and unpack the sdist's models folder into the cache, once."""
    dest = sdist_dir()
    if have_sdist():
        return dest
    with tempfile.TemporaryDirectory(prefix="tmplcheck-sdist-") as tmp:
        if tarball is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"{SDIST_NAME}=={SDIST_VERSION}", "-d", tmp, "-q"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if proc.returncode != 0 or not found:
                raise AssetError(f"could not download the {SDIST_NAME} {SDIST_VERSION} sdist from the package index:\n"
                                 f"{proc.stderr.strip()[-2000:]}")
            tarball = found[0]
        staging = dest.parent / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(tarball) as tf:
            for m in tf:
                rel = m.name.split("/", 1)[1] if "/" in m.name else ""
                if not rel.startswith(_MODELS) or not m.isfile():
                    continue
                sub = rel[len(_MODELS):]
                if "/" in sub and not sub.startswith("templates/"):
                    continue  # only the vocab files at the top and the templates folder
                target = staging / sub
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        (staging / ".complete").write_text(f"{SDIST_NAME}=={SDIST_VERSION}\n")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, dest)
    return dest
