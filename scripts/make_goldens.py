#!/usr/bin/env python
"""Regenerate the golden renders of the built-in templates: fixtures/golden/<template>/<context>[.gen].txt.

Each context in fixtures/golden/contexts/*.json is rendered without and with the generation prompt (``.gen``),
with the date pinned to 2024-07-26; a render that raises is stored as ``<context>[.gen].error.txt`` holding the
message. tests/test_goldens.py checks that the files match a fresh render; after an intended change, run
``python scripts/make_goldens.py`` and review the diff.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "fixtures" / "golden"
PINNED = datetime(2024, 7, 26)


def renders() -> dict[str, str]:
    """{relative path: content} for every built-in x context x generation prompt."""
    from tmplcheck.templates import builtin, registry
    from tmplcheck.validator.render import TemplateRenderError

    out = {}
    contexts = sorted((GOLDEN / "contexts").glob("*.json"))
    for name in registry():
        t = builtin(name).pinned(PINNED)
        for ctx in contexts:
            msgs = json.loads(ctx.read_text(encoding="utf-8"))
            for agp in (False, True):
                stem = ctx.stem + (".gen" if agp else "")
                try:
                    out[f"{name}/{stem}.txt"] = t.render(msgs, add_generation_prompt=agp)
                except TemplateRenderError as e:
                    out[f"{name}/{stem}.error.txt"] = f"{e.kind}: {e.message}\n"
    return out


def main() -> int:
    files = renders()
    for d in GOLDEN.iterdir():
        if d.is_dir() and d.name != "contexts":
            shutil.rmtree(d)
    for rel, text in files.items():
        p = GOLDEN / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    print(f"wrote {len(files)} golden renders under {GOLDEN.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
