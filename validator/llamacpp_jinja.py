"""llama.cpp's own Jinja engine (``common/jinja``) as a renderer: what ``llama-server --jinja`` renders.

llama.cpp no longer formats chats only with its hard-coded builtins (``validator/llamacpp.py``): with ``--jinja``
(the default way to serve a GGUF with its own template) it runs the template in its own C++ Jinja engine, which is
not Python's jinja2. This module compiles that engine, from the sources vendored in the pinned llama-cpp-python
sdist (``vendor/llama.cpp/common/jinja``, plus ``common/json.cpp``, ``common/unicode.cpp`` and nlohmann/json), into a
small shared library with a two-function C API, loaded with ctypes:

    python -m tmplcheck.validator.llamacpp_jinja build      # at set-up (also built on first use); needs a C++17 compiler

The build lives in the cache (``$TMPLCHECK_CACHE/llamacpp-jinja/<key>/``), keyed by the sources' sha256 and the
shim's, so a new sdist or shim rebuilds it. :func:`build_info` says which llama.cpp it is.

:class:`LlamaCppJinjaRenderer` gives the template the variables llama.cpp's ``common_chat_template_direct_apply``
gives it (``server_context=True``, the default): ``messages``, ``bos_token``, ``eos_token``, ``enable_thinking``
(true unless asked otherwise, as llama-server), ``add_generation_prompt`` **only when true** (llama.cpp leaves it
undefined otherwise), ``tools`` only when there are tools, and any extra variables. With ``server_context=False`` it
gives exactly what transformers gives (``add_generation_prompt`` always, ``tools`` null), which compares the two
engines on equal inputs. Not modelled: the input rewrites llama-server applies before rendering (``common/chat.cpp``:
the system-role polyfill for templates that never read ``messages[0].content``, ``developer`` → ``system``, empty
content for tool-call messages, typed-content normalisation) and its BOS/EOS stripping when a model is loaded.

:func:`compare_with_hf` renders a conversation both ways and explains a difference by switching llama-server's
variables to transformers' values one at a time (:data:`CAUSES`); what is left is the engines' own difference. On
the sdist's 70 upstream templates (``tests/test_llamacpp_jinja.py``) every difference is one of the three variables,
except firefunction-v2, which adds an undefined variable to a string (jinja2 raises, llama.cpp renders an empty
string). This is the classification the gate's X comparison needs; the gate does not run it yet.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LLAMA = "vendor/llama.cpp/"
#: the files of the sdist the engine is built from (relative to vendor/llama.cpp)
SOURCES = [f"common/jinja/{n}" for n in ("caps.cpp", "caps.h", "lexer.cpp", "lexer.h", "parser.cpp", "parser.h",
                                         "runtime.cpp", "runtime.h", "string.cpp", "string.h", "utils.h", "value.cpp",
                                         "value.h")] + \
    ["common/json.cpp", "common/json.h", "common/unicode.cpp", "common/unicode.h",
     "vendor/nlohmann/json.hpp", "vendor/nlohmann/json_fwd.hpp"]
_COMPILE = ["common/jinja/lexer.cpp", "common/jinja/parser.cpp", "common/jinja/runtime.cpp", "common/jinja/value.cpp",
            "common/jinja/string.cpp", "common/jinja/caps.cpp", "common/json.cpp", "common/unicode.cpp"]

# common/json.cpp includes ggml.h for GGML_ASSERT only (nlohmann's JSON_ASSERT); like ggml, a failed one aborts
_GGML_STUB = """#pragma once
// stand-in for ggml.h (tmplcheck): common/json.cpp only needs GGML_ASSERT, used as nlohmann's JSON_ASSERT
#include <cstdio>
#include <cstdlib>
#define GGML_ASSERT(x) do { if (!(x)) { std::fprintf(stderr, "GGML_ASSERT(%s) failed\\n", #x); std::abort(); } } while (0)
#define GGML_ABORT(...) std::abort()
"""

_SHIM = r"""// tmplcheck: render a chat template with llama.cpp's Jinja engine (common/jinja), as common/chat.cpp does.
#include "jinja/lexer.h"
#include "jinja/parser.h"
#include "jinja/runtime.h"
#include "jinja/value.h"
#include "json.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

static char * dup_bytes(const std::string & s, size_t * len) {
    char * p = static_cast<char *>(std::malloc(s.size() + 1));
    if (p) {
        std::memcpy(p, s.data(), s.size());
        p[s.size()] = '\0';
    }
    *len = p ? s.size() : 0;
    return p;
}

extern "C" {

// 0: *out holds the rendered text (*out_len bytes); 1: *out holds the engine's error message.
// ctx_json: the template's variables, a JSON object. Free *out with tmplcheck_jinja_free.
int tmplcheck_jinja_render(const char * tmpl, const char * ctx_json, char ** out, size_t * out_len) {
    try {
        jinja::lexer lexer;
        auto lexed = lexer.tokenize(tmpl);
        jinja::program prog = jinja::parse_from_tokens(lexed);
        jinja::context ctx(lexed.source);
        common_json inp = common_json::parse(std::string(ctx_json));
        jinja::global_from_json(ctx, inp, false);
        jinja::runtime runtime(ctx);
        const jinja::value results = runtime.execute(prog);
        auto parts = jinja::runtime::gather_string_parts(results);
        *out = dup_bytes(parts->as_string().str(), out_len);
        return 0;
    } catch (const std::exception & e) {
        *out = dup_bytes(e.what(), out_len);
        return 1;
    } catch (...) {
        *out = dup_bytes("unknown error", out_len);
        return 1;
    }
}

void tmplcheck_jinja_free(char * p) { std::free(p); }

}
"""


class EngineUnavailable(RuntimeError):
    """The engine could not be built or loaded (no compiler, no sdist sources); the message says why."""


class EngineError(Exception):
    """The template failed in llama.cpp's engine (a parse error, an exception it raised, raise_exception)."""


def _root() -> Path:
    from tmplcheck.assets import cache_root

    return cache_root() / "llamacpp-jinja"


def sources_dir() -> Path:
    from tmplcheck.assets import SDIST_VERSION, cache_root

    return cache_root() / f"llama-cpp-python-{SDIST_VERSION}" / "jinja-src"


def ensure_sources(tarball: str | os.PathLike | None = None) -> Path:
    """The engine's sources from the pinned sdist, unpacked once into the cache (from ``tarball``, else downloading
    the sdist with pip when they are not there yet)."""
    from tmplcheck.assets import unpack_sdist

    want = set(SOURCES)

    def pick(rel: str) -> str | None:
        sub = rel[len(_LLAMA):] if rel.startswith(_LLAMA) else None
        return sub if sub in want else None

    return unpack_sdist(sources_dir(), pick, tuple(SOURCES), tarball)


def _key(src: Path) -> str:
    h = hashlib.sha256()
    for s in SOURCES:
        h.update(s.encode() + b"\0" + (src / s).read_bytes())
    h.update(_SHIM.encode() + _GGML_STUB.encode())
    return h.hexdigest()


def built() -> Path | None:
    """The engine's shared library when set-up has built it (nothing is compiled here); None otherwise."""
    try:
        src = sources_dir()
        lib = _root() / _key(src)[:16] / "libtmplcheck_jinja.so"
    except Exception:  # noqa: BLE001 - no sources unpacked
        return None
    return lib if lib.is_file() else None


def build(*, force: bool = False, quiet: bool = True, tarball: str | os.PathLike | None = None) -> Path:
    """Compile the engine into the cache once; returns the shared library's path."""
    src = ensure_sources(tarball)
    key = _key(src)
    dest = _root() / key[:16]
    lib = dest / "libtmplcheck_jinja.so"
    if lib.is_file() and not force:
        return lib
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise EngineUnavailable("no C++ compiler (g++, c++ or clang++; or set CXX) to build llama.cpp's Jinja engine")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=dest.parent))
    try:
        (staging / "stub").mkdir()
        (staging / "stub" / "ggml.h").write_text(_GGML_STUB)
        (staging / "capi.cpp").write_text(_SHIM)
        cmd = [cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-w", "-o", str(staging / lib.name),
               "-I", str(staging / "stub"), "-I", str(src / "common"), "-I", str(src / "vendor"),
               str(staging / "capi.cpp"), *[str(src / c) for c in _COMPILE]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EngineUnavailable(f"building llama.cpp's Jinja engine failed ({' '.join(cmd[:6])} ...):\n"
                                    f"{proc.stderr[-3000:]}")
        (staging / "build.json").write_text(json.dumps(build_info_for(src, key), indent=1))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not quiet:
        print(f"built {lib}")
    return lib


def build_info_for(src: Path, key: str) -> dict[str, Any]:
    from tmplcheck.assets import SDIST_NAME, SDIST_VERSION

    return {"engine": "llama.cpp common/jinja", "from": f"{SDIST_NAME}=={SDIST_VERSION} (vendor/llama.cpp)",
            "sources_sha256": key, "files": SOURCES}


_LIB = None
_LOCK = threading.Lock()


def _lib():
    global _LIB
    with _LOCK:
        if _LIB is None:
            try:
                path = build()
            except EngineUnavailable:
                raise
            except Exception as e:  # noqa: BLE001 - no sdist, no network at first use...
                raise EngineUnavailable(f"llama.cpp's Jinja engine is not available: {e}") from e
            lib = ctypes.CDLL(str(path))
            lib.tmplcheck_jinja_render.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p),
                                                   ctypes.POINTER(ctypes.c_size_t)]
            lib.tmplcheck_jinja_render.restype = ctypes.c_int
            lib.tmplcheck_jinja_free.argtypes = [ctypes.c_void_p]
            lib.tmplcheck_jinja_free.restype = None
            _LIB = lib
    return _LIB


def build_info() -> dict[str, Any]:
    """Which llama.cpp the engine was built from (the sdist and the sha256 of its sources)."""
    lib = build()
    return json.loads((lib.parent / "build.json").read_text())


def render_raw(source: str, variables: dict[str, Any]) -> str:
    """Render ``source`` with ``variables`` (JSON-serialisable) in llama.cpp's engine; raises :class:`EngineError`."""
    lib = _lib()
    out = ctypes.c_void_p()
    n = ctypes.c_size_t()
    ctx = json.dumps(variables, ensure_ascii=False, default=str).encode("utf-8")
    rc = lib.tmplcheck_jinja_render(source.encode("utf-8"), ctx, ctypes.byref(out), ctypes.byref(n))
    try:
        text = ctypes.string_at(out, n.value).decode("utf-8", "replace") if out.value else ""
    finally:
        lib.tmplcheck_jinja_free(out)
    if rc != 0:
        raise EngineError(text.strip() or "the engine failed")
    return text


class LlamaCppJinjaRenderer:
    """``render(messages, *, add_generation_prompt, tools=None, **kwargs) -> str`` with llama.cpp's Jinja engine."""

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None,
                 server_context: bool = True, enable_thinking: bool = True):
        self.source = source
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.server_context = server_context
        self.enable_thinking = enable_thinking

    @classmethod
    def of(cls, template, **kw) -> "LlamaCppJinjaRenderer":
        """For a loaded :class:`~tmplcheck.templates.Template` (its source and special tokens)."""
        return cls(template.source, bos_token=template.meta.bos_token, eos_token=template.meta.eos_token, **kw)

    def variables(self, messages: list[dict], *, add_generation_prompt: bool, tools=None, **kwargs) -> dict:
        v: dict[str, Any] = {"messages": messages, "bos_token": self.bos_token, "eos_token": self.eos_token}
        if self.server_context:
            v["enable_thinking"] = self.enable_thinking
            if tools:
                v["tools"] = tools
            if add_generation_prompt:
                v["add_generation_prompt"] = True
        else:
            v["add_generation_prompt"] = bool(add_generation_prompt)
            v["tools"] = tools
        v.update(kwargs)
        return v

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False, tools=None, **kwargs) -> str:
        return render_raw(self.source, self.variables(messages, add_generation_prompt=add_generation_prompt,
                                                      tools=tools, **kwargs))


# ------------------------------------------------------------------------------------ comparing with transformers
#: the causes :func:`compare_with_hf` can prove, in the order it tries them: each is one variable that llama-server
#: sets differently from transformers, switched to transformers' value
CAUSES = {
    "enable_thinking": "llama-server passes enable_thinking=true; transformers passes nothing",
    "add_generation_prompt": "llama-server leaves add_generation_prompt undefined when false; transformers passes false",
    "tools": "llama-server leaves tools undefined without tools; transformers passes tools=None",
}


@dataclass
class JinjaComparison:
    """One conversation through transformers' jinja2 and llama-server's engine (``llama-server --jinja``)."""

    hf: str | None                     # None: jinja2 refused (``hf_error``)
    llamacpp: str | None               # None: llama.cpp's engine refused (``llamacpp_error``)
    hf_error: str = ""
    llamacpp_error: str = ""
    causes: list[str] = field(default_factory=list)   # CAUSES keys that explain the difference (empty: same)
    engine: bool = False               # still different with transformers' variables: the engines differ

    @property
    def same(self) -> bool:
        return not self.causes and not self.engine

    @property
    def explained(self) -> bool:
        return not self.engine


def compare_with_hf(template, messages: list[dict], *, add_generation_prompt: bool = False, tools=None,
                    enable_thinking: bool = True) -> JinjaComparison:
    """Render ``messages`` with the template's HF renderer and with llama-server's engine and variables; when the two
    differ, switch llama-server's variables to transformers' values one at a time (:data:`CAUSES`) and say which
    switches make the renders agree. What still differs with every variable as transformers has it is the engines
    themselves (``engine=True``: an undefined value concatenated, a filter that behaves otherwise...)."""
    from tmplcheck.validator.render import TemplateRenderError

    def outcome(fn) -> tuple[str | None, str]:
        try:
            return fn(), ""
        except (TemplateRenderError, EngineError) as e:
            return None, str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__

    hf, hf_err = outcome(lambda: template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools))
    r = LlamaCppJinjaRenderer.of(template, enable_thinking=enable_thinking)
    variables = r.variables(messages, add_generation_prompt=add_generation_prompt, tools=tools)
    lc, lc_err = outcome(lambda: render_raw(r.source, variables))
    out = JinjaComparison(hf, lc, hf_err, lc_err)

    def agree(text: str | None) -> bool:
        return text == hf if hf is not None else text is None

    if agree(lc):
        return out
    for cause in CAUSES:
        if cause == "enable_thinking":
            if "enable_thinking" not in variables:
                continue
            variables.pop("enable_thinking")
        elif cause == "add_generation_prompt":
            if "add_generation_prompt" in variables:
                continue
            variables["add_generation_prompt"] = bool(add_generation_prompt)
        elif cause == "tools":
            if "tools" in variables:
                continue
            variables["tools"] = tools
        text, _ = outcome(lambda: render_raw(r.source, variables))
        out.causes.append(cause)
        if agree(text):
            # keep only the switches that matter: drop each earlier one if the renders agree without it
            return _minimal(out, r, messages, add_generation_prompt, tools, enable_thinking, agree, outcome)
    out.engine = True
    return out


def _minimal(out, r, messages, add_generation_prompt, tools, enable_thinking, agree, outcome) -> JinjaComparison:
    for cause in list(out.causes):
        trial = [c for c in out.causes if c != cause]
        v = r.variables(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        if "enable_thinking" in trial:
            v.pop("enable_thinking", None)
        if "add_generation_prompt" in trial:
            v["add_generation_prompt"] = bool(add_generation_prompt)
        if "tools" in trial:
            v["tools"] = tools
        text, _ = outcome(lambda v=v: render_raw(r.source, v))
        if agree(text):
            out.causes = trial
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tmplcheck.validator.llamacpp_jinja",
                                 description="Build llama.cpp's Jinja engine from the pinned sdist into the cache.")
    ap.add_argument("cmd", choices=["build", "info"])
    ap.add_argument("--force", action="store_true", help="build again even when a current build exists")
    ap.add_argument("--sdist", metavar="TARBALL", help="the llama-cpp-python sdist to take the sources from "
                                                       "(default: download it with pip)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            print(build(force=args.force, tarball=args.sdist))
        print(json.dumps(build_info(), indent=1))
    except Exception as e:  # noqa: BLE001 - one sentence for the set-up log
        print(f"llama.cpp Jinja engine: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
