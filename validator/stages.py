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
    if cfg.template is not None or cfg.tokenizer is not None:
        raise NotImplementedError("template and tokenizer stages are not wired yet")
    return stages
