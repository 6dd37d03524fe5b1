"""Golden renders of the built-ins (regenerate with scripts/make_goldens.py and review the diff)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "fixtures" / "golden"


def _script():
    spec = importlib.util.spec_from_file_location("make_goldens", ROOT / "scripts" / "make_goldens.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_goldens_match_a_fresh_render():
    fresh = _script().renders()
    on_disk = {str(p.relative_to(GOLDEN)): p.read_text(encoding="utf-8") for p in GOLDEN.rglob("*.txt")}
    assert set(fresh) == set(on_disk), "run scripts/make_goldens.py"
    for rel, text in fresh.items():
        assert on_disk[rel] == text, f"{rel} differs: run scripts/make_goldens.py and review the diff"


def test_goldens_cover_every_builtin_and_gemma_refuses_system():
    from tmplcheck.templates import registry

    for name in registry():
        assert (GOLDEN / name / "simple.gen.txt").is_file(), name
    assert (GOLDEN / "gemma" / "system.error.txt").read_text() == "raise: System role not supported\n"
    assert (GOLDEN / "llama-3.1" / "simple.txt").read_text().startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|>")
