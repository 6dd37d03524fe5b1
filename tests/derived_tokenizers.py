"""Tokenizer directories derived from the real Llama 3 one, for the tests that need a pair the built-ins are not:
a *base* model (its generation config stops on <|end_of_text|> only) and a tokenizer.json that adds no BOS while its
config says add_bos_token (as transformers' GGUF conversion writes it). Each writes into an empty directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def llama3_dir() -> Path:
    from tmplcheck.validator.tokenizer import load_tokenizer

    return load_tokenizer("llama-3").hf_dir


def llama3_base(d: Path) -> Path:
    src = llama3_dir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, d / name)
    shutil.copy(FIX / "tokens" / "llama3-base" / "generation_config.json", d / "generation_config.json")
    return d


def llama3_no_bos(d: Path) -> Path:
    src = llama3_dir()
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                            "use_regex": False}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = True
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    shutil.copy(src / "generation_config.json", d / "generation_config.json")
    return d
