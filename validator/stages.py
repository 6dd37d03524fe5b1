"""Build the gate's extra stages (template, tokens) from the command-line/config choices.

Each stage module owns its checks; this is the one place that plugs them into the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StageConfig:
    template: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    extra: dict[str, Any] | None = None


def build_stages(cfg: StageConfig) -> list:
    """The stage factories. With both a template and a tokenizer, the token stage carries the template stage's
    per-row work in its batches and process pool (each row rendered once for both), so both use every core."""
    stages: list = []
    if cfg.template is not None:
        stages.append(template_stage_factory(cfg))
    if cfg.tokenizer is not None:
        stages.append(token_stage_factory(cfg))
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
                st.attach(ts)
            return st

        stages = [template_make, token_make]
    return stages


def token_stage_factory(cfg: StageConfig):
    """``--tokenizer`` (with ``--template``, else the tokenizer's own chat template, else the registry's default
    template for that tokenizer) → a factory for the gate's token stage. Loads both once, up front."""
    from tmplcheck.validator.token_stage import TokenStage, resolve_template
    from tmplcheck.validator.tokenizer import load_tokenizer

    # llama.cpp's vocabulary (for K010) loads in a background thread while the HF tokenizer does
    tokenizer = load_tokenizer(cfg.tokenizer, prefetch_llama_cpp=True)
    template = resolve_template(cfg.template, tokenizer)
    extra = cfg.extra or {}
    jobs = extra.get("jobs")

    def make(path: str):
        return TokenStage(path, template, tokenizer, max_length=cfg.max_length, jobs=jobs,
                          llamacpp_vocab=str(tokenizer.gguf_path) if getattr(tokenizer, "gguf_path", None) else None,
                          tokenizer_name=str(cfg.tokenizer),
                          add_special_tokens=extra.get("add_special_tokens", "auto"), fill=extra.get("fill", True))

    return make


def template_stage_factory(cfg: StageConfig):
    """``--template`` → a factory for the gate's template stage (T codes, and X codes from the llama.cpp
    comparison). Loads the template once, up front, so a bad spec fails before any row is read."""
    from tmplcheck.templates import load_template
    from tmplcheck.validator.template_stage import TemplateStage

    template = load_template(cfg.template)
    fill = (cfg.extra or {}).get("fill", True)

    def make(path: str):
        return TemplateStage(path, template, fill=fill)

    return make
