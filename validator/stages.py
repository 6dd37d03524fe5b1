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
    stages: list = []
    if cfg.template is not None:
        stages.append(template_stage_factory(cfg))
    if cfg.tokenizer is not None:
        stages.append(token_stage_factory(cfg))
    return stages


def token_stage_factory(cfg: StageConfig):
    """``--tokenizer`` (with ``--template``, else the tokenizer's own chat template, else the registry's default
    template for that tokenizer) → a factory for the gate's token stage. Loads both once, up front."""
    from tmplcheck.validator.token_stage import TokenStage, resolve_template
    from tmplcheck.validator.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer)
    template = resolve_template(cfg.template, tokenizer)
    extra = cfg.extra or {}
    jobs = extra.get("jobs")

    def make(path: str):
        return TokenStage(path, template, tokenizer, max_length=cfg.max_length, jobs=jobs,
                          llamacpp_vocab=str(tokenizer.gguf_path) if getattr(tokenizer, "gguf_path", None) else None,
                          tokenizer_name=str(cfg.tokenizer),
                          add_special_tokens=extra.get("add_special_tokens", "auto"))

    return make


def template_stage_factory(cfg: StageConfig):
    """``--template`` → a factory for the gate's template stage (T codes, and X codes from the llama.cpp
    comparison). Loads the template once, up front, so a bad spec fails before any row is read."""
    from tmplcheck.templates import load_template
    from tmplcheck.validator.template_stage import TemplateStage

    template = load_template(cfg.template)

    def make(path: str):
        return TemplateStage(path, template)

    return make
