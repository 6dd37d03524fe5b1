#!/usr/bin/env python
"""How many chat templates are content-opaque (``validator/opaque.py``): the built-ins and the upstream templates
shipped in the llama-cpp-python sdist. Prints the counts the README quotes, and each refused template's reason.

    .venv/bin/python bench/opaque_census.py [--reasons]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reasons", action="store_true", help="print why each refused template is not opaque")
    a = ap.parse_args(argv)
    from tmplcheck.assets import upstream_templates_dir
    from tmplcheck.templates import load_template, registry
    from tmplcheck.validator.opaque import analyse

    builtins = {n: analyse(load_template(n).source) for n in registry()}
    upstream = {p.stem: analyse(p.read_text(encoding="utf-8"))
                for p in sorted(upstream_templates_dir().glob("*.jinja"))}
    nb = sum(x.opaque for x in builtins.values())
    nu = sum(x.opaque for x in upstream.values())
    print(f"built-in templates content-opaque: {nb} of {len(builtins)}")
    print(f"upstream templates (llama-cpp-python sdist) content-opaque: {nu} of {len(upstream)}")
    for name, x in upstream.items():
        if x.opaque:
            print(f"  opaque: {name}")
        elif a.reasons:
            print(f"  not opaque: {name}: {x.reason}")
    return {"builtin": [nb, len(builtins)], "upstream": [nu, len(upstream)]}


if __name__ == "__main__":
    main()
