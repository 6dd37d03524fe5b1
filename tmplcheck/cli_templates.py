"""``tmplcheck templates``: list the built-in chat templates (or show one)."""

from __future__ import annotations

import json

import click


@click.command("templates")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@click.option("--source", is_flag=True, help="With NAME: print the template's Jinja source.")
def templates_cmd(name, as_json, source):
    """List the built-in templates; with NAME, show one template's metadata (or its source)."""
    from dataclasses import asdict

    from tmplcheck.templates import builtin, registry

    reg = registry()
    if name:
        if name not in reg:
            raise click.UsageError(f"no built-in template {name!r}; `tmplcheck templates` lists them")
        t = builtin(name)
        if source:
            click.echo(t.source, nl=False)
            return
        d = asdict(t.meta)
        d["sha256"] = t.sha256
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
        return
    if as_json:
        click.echo(json.dumps({n: asdict(m) for n, m in reg.items()}, indent=2, ensure_ascii=False))
        return
    rows = [("NAME", "LLAMA.CPP", "SYSTEM", "END OF TURN", "TRAIN", "DESCRIPTION")]
    for n, m in reg.items():
        rows.append((n, m.llama_cpp or "-", "yes" if m.system_role else "no", " ".join(m.end_of_turn) or "-",
                     "yes" if m.has_generation_markers else "-", m.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])


COMMANDS = [templates_cmd]
