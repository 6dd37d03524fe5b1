"""Build the gate's extra stages (template, tokens) from the command-line/config choices.

Each stage module owns its checks; this is the one place that plugs them into the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StageConfig:
    """What the gate's stages are built from. ``extra`` holds the rest: ``jobs``, ``add_special_tokens``, ``fill``,
    ``share`` and ``render_defaults`` (the template arguments rows without their own get: ``tools``,
    ``documents`` and any ``--template-kwargs``)."""

    template: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    extra: dict[str, Any] | None = None


def build_stages(cfg: StageConfig) -> list:
    """The stage factories. With both a template and a tokenizer, the token stage carries the template stage's
    per-row work in its batches and process pool (each row rendered once for both), so both use every core."""
    stages: list = []
    # the tokenizer (~1 s for a 128k vocabulary, the Rust parse releases the GIL) loads in a background thread while
    # this one imports llama-cpp-python and loads the template
    tokenizer = _Background(_load_tokenizer, cfg.tokenizer) if cfg.tokenizer is not None else None
    # without llama-cpp-python (or with one that cannot import: a missing dependency such as diskcache, a shared
    # library that does not load) the gate still runs; the llama.cpp checks are reported as not run, once per file
    no_llama = llama_cpp_unavailable() if (cfg.template is not None or cfg.tokenizer is not None) else None
    if cfg.template is not None:
        stages.append(template_stage_factory(cfg, cross=no_llama is None))
    if cfg.tokenizer is not None:
        stages.append(token_stage_factory(cfg, llama_cpp=no_llama is None, tokenizer=tokenizer.result()))
    if len(stages) == 2 and (cfg.extra or {}).get("share", True):
        make_t, make_k = stages
        made: dict[str, object] = {}

        def template_make(path: str):
            st = made[path] = make_t(path)
            return st

        def token_make(path: str):
            st = make_k(path)
            ts = made.pop(path, None)
            if ts is not None:
                ts.audit_tokenizer = st.pipeline.tokenizer   # the audit's vocabulary check (T016)
                st.attach(ts)
            return st

        stages = [template_make, token_make]
    if no_llama is not None:
        skipped = (["X codes (HF vs llama.cpp render)"] if cfg.template is not None else []) + (
            ["K010 (llama.cpp token ids)"] if cfg.tokenizer is not None else [])
        stages.append(lambda path: LlamaCppNotRun(path, no_llama, skipped))
    return stages


def llama_cpp_unavailable() -> str | None:
    """Why llama-cpp-python cannot be used in this environment, or None when it imports."""
    try:
        import llama_cpp  # noqa: F401, PLC0415 - the binding the X and K010 checks need
    except Exception as e:  # noqa: BLE001 - ImportError (it or a dependency missing), OSError (its library)
        return f"llama_cpp cannot be imported ({type(e).__name__}: {e})"
    return None


class LlamaCppNotRun:
    """Says, once per file, that the llama.cpp checks did not run and why (a gate stage with no row work)."""

    name = "llamacpp"

    def __init__(self, path: str, reason: str, skipped: list[str]):
        self.path, self.reason, self.skipped = path, reason, skipped

    def prepare(self) -> list:
        return []

    def chunk_worker(self):
        return None

    def take(self, info, payload) -> list:
        return []

    def take_clean(self, block, kind) -> tuple[list, None]:
        return [], None

    def check(self, conv) -> list:
        return []

    def finish(self) -> list:
        return []

    def summary(self) -> dict[str, Any]:
        what = " and ".join(self.skipped)
        return {"ran": False, "reason": self.reason, "not_run": self.skipped,
                "headline": f"not run: {what}; {self.reason}"}


def _load_tokenizer(spec: str):
    from tmplcheck.validator.tokenizer import load_tokenizer

    return load_tokenizer(spec)


class _Background:
    """``fn(*args)`` in a daemon thread; ``result()`` waits and returns it (or raises what it raised)."""

    def __init__(self, fn, *args):
        import threading

        self._out: list = []

        def run() -> None:
            try:
                self._out.append((True, fn(*args)))
            except BaseException as e:  # noqa: BLE001 - raised again by result()
                self._out.append((False, e))

        self._t = threading.Thread(target=run, name="tmplcheck-load", daemon=True)
        self._t.start()

    def result(self):
        self._t.join()
        ok, v = self._out[0]
        if not ok:
            raise v
        return v


def token_stage_factory(cfg: StageConfig, *, llama_cpp: bool = True, tokenizer=None):
    """``--tokenizer`` (with ``--template``, else the tokenizer's own chat template, else the registry's default
    template for that tokenizer) → a factory for the gate's token stage. Loads both once, up front."""
    from tmplcheck.validator.token_stage import TokenStage, resolve_template
    from tmplcheck.validator.tokenizer import load_tokenizer

    # llama.cpp's vocabulary (for K010) is not loaded here: the token stage starts loading it in a background thread
    # of the gate's process once the workers have forked (``TokenStage.take``), so that start-up does not wait for it
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer)
    template = resolve_template(cfg.template, tokenizer)
    extra = cfg.extra or {}
    jobs = extra.get("jobs")

    def make(path: str):
        return TokenStage(path, template, tokenizer, max_length=cfg.max_length, jobs=jobs,
                          llamacpp_vocab=str(tokenizer.gguf_path) if llama_cpp and getattr(tokenizer, "gguf_path",
                                                                                          None) else None,
                          tokenizer_name=str(extra.get("tokenizer_name") or cfg.tokenizer),
                          add_special_tokens=extra.get("add_special_tokens", "auto"), fill=extra.get("fill", True),
                          render_defaults=extra.get("render_defaults"), train_on=extra.get("train_on"))

    return make


def template_stage_factory(cfg: StageConfig, *, cross: bool = True):
    """``--template`` → a factory for the gate's template stage (T codes, and X codes from the llama.cpp
    comparison). Loads the template once, up front, so a bad spec fails before any row is read."""
    from tmplcheck.templates import load_template
    from tmplcheck.validator.template_stage import TemplateStage

    template = load_template(cfg.template)
    fill = (cfg.extra or {}).get("fill", True)
    defaults = (cfg.extra or {}).get("render_defaults")

    def make(path: str):
        return TemplateStage(path, template, fill=fill, render_defaults=defaults, cross=cross)

    return make
