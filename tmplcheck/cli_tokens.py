"""``tmplcheck show`` (one row's tokens, trained vs masked) and ``tmplcheck probe`` (hypothesis properties)."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from tmplcheck.config import check_options, resolve_or_exit


def _load_pair(template: str | None, tokenizer: str | None):
    from tmplcheck.cli import load_tokenizer_option
    from tmplcheck.validator.token_stage import resolve_template

    if not tokenizer:
        raise click.UsageError("--tokenizer is required (or set tokenizer in tmplcheck.toml)")
    tok = load_tokenizer_option(tokenizer)
    try:
        tmpl = resolve_template(template, tok)
    except Exception as e:  # TemplateLoadError, ValueError (no default template)
        raise click.ClickException(str(e)) from None
    return tmpl, tok


def _pipeline_kw(settings) -> dict:
    """The token pipeline's arguments from the check settings (as the gate's token stage gets them)."""
    kw: dict = {"max_length": settings.max_length}
    if settings.add_special_tokens != "auto":
        kw["add_special_tokens"] = {"yes": True, "no": False}[settings.add_special_tokens]
    if getattr(settings, "train_on", "all-assistant") != "all-assistant":
        kw["train_on"] = settings.train_on
    return kw


def _probe_kw(settings) -> dict:
    def keep(code: str) -> bool:   # --for-train makes K005 an info: not a violation of the mask property
        return settings.keeps(code) and not (settings.for_train and code == "K005")

    return {"pipeline_kw": _pipeline_kw(settings), "keep": keep}


def _source_row(data: str, row_no: int, input_format: str | None):
    """Row ``row_no`` (0-based) of a parquet/Arrow/save_to_disk/cached-id source → (Conversation, where)."""
    from tmplcheck.cli import Refusal, ToolFailure
    from tmplcheck.validator.ingest import parse_object
    from tmplcheck.validator.sources import SourceError, location_text, open_source

    try:
        src = open_source(data, display_path=data, input_format=input_format)
        if not src.objects:
            raise click.UsageError(f"{data} is a JSONL file: give --line")
        for rec in src.records():
            if rec.line == row_no + 1:
                row = parse_object(rec.line, rec.data, path=data, input_format=input_format)
                break
        else:
            raise click.UsageError(f"{data} has no row {row_no}")
    except SourceError as e:
        raise (click.UsageError if "no such file" in str(e) else ToolFailure)(str(e)) from None
    from tmplcheck.validator.findings import Finding, Severity

    where = location_text(Finding("D000", Severity.INFO, "", path=data, line=row_no + 1, data=src.where(row_no + 1)))
    if row.conversation is None:
        msgs = "; ".join(f"{f.code} {f.message}" for f in row.findings)
        raise Refusal(f"{where} holds no readable conversation ({msgs})")
    return row.conversation, where


def token_table(tmpl, tok, conv, settings=None) -> dict:
    """The row's tokens with strings, offsets, mask, special flags and the message each belongs to, plus findings."""
    from tmplcheck.validator.checks.tokens import IGNORE
    from tmplcheck.validator.token_pipeline import TokenPipeline, row_in
    from tmplcheck.validator.tokens import encode_conversation

    messages = conv.dicts()
    pipe = TokenPipeline(tmpl, tok, path=conv.path, **(_pipeline_kw(settings) if settings is not None else {}))
    enc = encode_conversation(tmpl, tok, messages, add_special_tokens=pipe.add_special_tokens,
                              render_kw=conv.render_kw(), train_on=pipe.train_on)
    turns, _ = pipe.turns_of(row_in(conv), messages, enc)
    found = sorted((t for t in turns if t.found), key=lambda t: t.start)
    specials = set(getattr(tok, "special_ids", ()))
    rows = []
    for i, (tid, (s, e), lab) in enumerate(zip(enc.ids, enc.offsets, enc.labels)):
        owner, part = None, "template"
        for t in found:
            if s < t.start:
                owner, part = t.index, "header"
                break
            if s < t.end or (e <= s and s == t.start):
                owner, part = t.index, "content"
                break
        rows.append({"index": i, "id": tid, "string": enc.text[s:e] if e > s else (tok.id_to_token(tid) or ""),
                     "token": tok.id_to_token(tid), "offset": [s, e], "trained": lab != IGNORE,
                     "special": tid in specials, "message": owner, "part": part})
    res = pipe.process_row(row_in(conv))
    findings = list(res.findings)
    if settings is not None:
        from tmplcheck.config import severity_overrides

        over = severity_overrides(settings.for_train)
        findings = [dataclasses.replace(f, severity=over[f.code][0], message=f"{f.message} ({over[f.code][1]})")
                    if f.code in over else f for f in findings if settings.keeps(f.code)]
    return {"path": conv.path, "line": conv.line, "template": tmpl.meta.name, "tokenizer": getattr(tok, "name", ""),
            "text": enc.text, "ids": list(enc.ids), "labels": list(enc.labels),
            "turns": [{"message": t.index, "role": t.role, "start": t.start, "end": t.end} for t in turns],
            "trained": trained_runs(enc), "tokens": rows, "findings": [f.to_dict() for f in findings]}


def trained_runs(enc) -> list[dict]:
    """Each run of consecutive trained tokens, as the text it covers, with the message whose turn it is in (the
    last message whose located start is at or before the run)."""
    from tmplcheck.validator.checks.tokens import IGNORE

    starts = sorted((s.content_start, s.index) for s in enc.spans if s.content_start is not None)
    out: list[dict] = []
    k = 0
    n = len(enc.labels)
    while k < n:
        if enc.labels[k] == IGNORE:
            k += 1
            continue
        j = k
        while j < n and enc.labels[j] != IGNORE:
            j += 1
        a, b = enc.offsets[k][0], max(e for _s, e in enc.offsets[k:j])
        owner = None
        for p, i in starts:
            if p > a:
                break
            owner = i
        out.append({"message": owner, "start": a, "end": b, "text": enc.text[a:b], "tokens": j - k})
        k = j
    return out


def render_rich(table: dict, console) -> None:
    """Coloured tokens: trained green, masked dim, special tokens boxed, a rule at each message boundary."""
    from rich.rule import Rule
    from rich.text import Text

    roles = {t["message"]: t["role"] for t in table["turns"]}
    console.print(f"[bold]{table.get('where') or str(table['path']) + ':' + str(table['line'])}[/] template [cyan]{table['template']}[/] tokenizer "
                  f"[cyan]{table['tokenizer']}[/]  {len(table['tokens'])} tokens, "
                  f"{sum(t['trained'] for t in table['tokens'])} trained ([black on green] trained [/] "
                  f"[dim]masked[/] [reverse] special [/])")
    line = Text()
    current = object()
    for tok in table["tokens"]:
        if tok["message"] != current and tok["message"] is not None and tok["part"] == "header":
            if line:
                console.print(line)
                line = Text()
            console.print(Rule(f"message {tok['message']} · {roles.get(tok['message'], '?')}", style="blue"))
            current = tok["message"]
        s = tok["string"]
        if tok["special"]:
            piece = f"⟦{tok['token']}⟧"
            style = "bold reverse green" if tok["trained"] else "reverse"
        else:
            piece = s.replace("\n", "↵\n").replace("\t", "→")
            style = "black on green" if tok["trained"] else "dim"
        parts = piece.split("\n")
        for k, p in enumerate(parts):
            if p:
                line.append(p, style=style)
            if k < len(parts) - 1:
                console.print(line)
                line = Text()
        line.append("│", style="grey30")
    if line:
        console.print(line)
    for f in table["findings"]:
        console.print(f"[bold red]{f['code']}[/] {f.get('pointer') or ''} {f['message']}")


def _show_tokenized(data, line_no, row_no, template, tokenizer, fmt, train_on) -> None:
    """``show --tokenized``: one row of a tokenized dataset as ``tmplcheck audit --show`` shows it (exits)."""
    from tmplcheck.cli_audit import show_audited, structure_for
    from tmplcheck.config import resolve_or_exit
    from tmplcheck.tokenized_data import TokenizedReadError, read_tokenized

    if (line_no is None) == (row_no is None):
        raise click.UsageError("give --row N (the 0-based row of the tokenized dataset) or --line N (a JSONL line)")
    st = resolve_or_exit(None, None, template=template, tokenizer=tokenizer)
    tmpl, tok = _load_pair(st.template, st.tokenizer)
    try:
        rows = read_tokenized(data)
        if row_no is None:   # a JSONL line: the row that starts on it
            rows = list(rows)
            hit = [i for i, line, _ in rows if line == line_no]
            if not hit:
                raise click.UsageError(f"{data} has no row at line {line_no}")
            row_no = hit[0]
        show_audited(data, rows, structure_for(tmpl, tok, None), tok, row_no, train_on or "all-assistant", fmt)
    except TokenizedReadError as e:
        raise click.UsageError(str(e)) from None


@click.command("show")
@click.argument("data", type=click.Path())
@click.option("--line", "line_no", type=int, help="The 1-based line of the row to show (JSONL).")
@click.option("--row", "row_no", type=int, help="The 0-based index of the row to show (parquet, Arrow, a "
                                                "save_to_disk folder, a cached dataset id: as `check` names it).")
@click.option("--template", "-t", help="Template (default: the tokenizer's own, or the registry's default for it).")
@click.option("--tokenizer", "-k", help="Tokenizer: a built-in name, a model dir, tokenizer.json, a GGUF, a hub id.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--input-format", type=click.Choice(["sharegpt", "openai", "alpaca"]), help="Force the row format.")
@click.option("--tokenized", is_flag=True, help="DATA is a tokenized dataset (input_ids with labels or masks, as "
                                                "`tmplcheck audit` reads it): show row N's audit, the expected mask "
                                                "beside the actual one (the row's 0-based index: --row, or --line).")
@check_options(template_args=True, train_on=True)
def show_cmd(data, line_no, row_no, template, tokenizer, fmt, input_format, tokenized, config_path, select, ignore,
             add_special, max_length, for_train, tools, documents, template_kwargs, train_on):
    """Show one row's tokens: trained vs masked, special tokens boxed, turn boundaries.

    Exit 0 shown; 1 the row cannot be read or the template refuses it (as the gate reports it), or (--tokenized) the
    row's audit has errors; 2 usage error.
    """
    from tmplcheck.cli import Refusal, ToolFailure, template_refusal
    from tmplcheck.templates import TemplateRenderError
    from tmplcheck.validator.ingest import read_rows

    if tokenized:
        _show_tokenized(data, line_no, row_no, template, tokenizer, fmt, train_on)
    st = resolve_or_exit(data, config_path, template=template, tokenizer=tokenizer, input_format=input_format,
                         select=select, ignore=ignore, add_special_tokens=add_special, max_length=max_length,
                         for_train=for_train, tools=tools, documents=documents, template_kwargs=template_kwargs,
                         train_on=train_on)
    if (line_no is None) == (row_no is None):
        raise click.UsageError("give --line N (a JSONL line) or --row N (a row of a parquet/Arrow/datasets source)")
    tmpl, tok = _load_pair(st.template, st.tokenizer)
    tmpl = tmpl.with_arguments(**st.render_defaults())   # a row's own tools/documents/kwargs still win
    if row_no is not None:
        conv, where = _source_row(data, row_no, st.input_format)
        line_no = conv.line
    else:
        where = f"{data}:{line_no}"
        conv = None
        from pathlib import Path

        if not Path(data).is_file():
            raise click.UsageError(f"{data}: no such file (--line reads a JSONL file; --row any other source)")
        for row in read_rows(data, input_format=st.input_format):
            if row.line == line_no:
                conv = row.conversation
                if conv is None:
                    msgs = "; ".join(f"{f.code} {f.message}" for f in row.findings)
                    raise Refusal(f"{data}:{line_no} holds no readable conversation ({msgs})")
                break
            if row.line > line_no:
                break
    if conv is None:
        raise click.UsageError(f"{data} has no row at line {line_no}")
    for m in conv.messages:
        try:
            m.content.encode("utf-8")
        except UnicodeEncodeError as e:
            raise Refusal(f"{where}: {m.pointer} holds a lone surrogate "
                          f"({m.content[e.start:e.end]!r} at character {e.start}), which no tokenizer "
                          "can encode (D027)") from None
        except AttributeError:   # typed content (a list of parts): the encoder reports it
            pass
    try:
        table = token_table(tmpl, tok, conv, st)
    except TemplateRenderError as e:
        raise template_refusal(e, where) from None
    except Exception as e:  # noqa: BLE001 - the tool could not encode this row
        raise ToolFailure(f"{where}: cannot render/encode this row: {type(e).__name__}: {e}") from None
    if row_no is not None:   # a row of a parquet/Arrow/datasets source: named as `check` names it
        table["row"], table["where"] = row_no, where
    if fmt == "json":
        click.echo(json.dumps(table, ensure_ascii=False, indent=1))
        return
    from rich.console import Console

    render_rich(table, Console(highlight=False, soft_wrap=True, force_terminal=sys.stdout.isatty() or None))


@click.command("probe")
@click.option("--template", "-t", help="Template (default: the tokenizer's own, or the registry's default for it).")
@click.option("--tokenizer", "-k", help="Tokenizer: a built-in name, a model dir, tokenizer.json, a GGUF, a hub id.")
@click.option("--examples", type=int, default=100, show_default=True, help="Generated conversations per property.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--property", "only", multiple=True, help="Only this property (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@check_options(template_args=True)
def probe_cmd(template, tokenizer, examples, seed, only, fmt, config_path, select, ignore, add_special, max_length,
              for_train, tools, documents, template_kwargs):
    """Generate conversations with hypothesis and check the template/tokenizer pair's properties.

    Prints each violated property with its shrunk counterexample; exit 1 on any. Settings come from the same
    file and flags as `tmplcheck check` (searched from the working directory); --add-special-tokens sets how the
    probed pipeline tokenizes.
    """
    from tmplcheck.validator.probe import run_probe

    st = resolve_or_exit(None, config_path, template=template, tokenizer=tokenizer, select=select, ignore=ignore,
                         add_special_tokens=add_special, max_length=max_length, for_train=for_train, tools=tools,
                         documents=documents, template_kwargs=template_kwargs)
    tmpl, tok = _load_pair(st.template, st.tokenizer)
    tmpl = tmpl.with_arguments(**st.render_defaults())   # every probed conversation is rendered with them
    res = run_probe(tmpl, tok, examples=examples, seed=seed, only=list(only) or None,
                    tokenizer_name=st.tokenizer or "", **_probe_kw(st))
    if fmt == "json":
        click.echo(json.dumps({"template": res.template, "tokenizer": res.tokenizer, "examples": res.examples,
                               "seed": res.seed, "passed": res.passed, "skipped": res.skipped,
                               "violations": [v.as_dict() for v in res.violations]}, ensure_ascii=False, indent=1))
    else:
        click.echo(f"probe {res.template} × {res.tokenizer}: {examples} examples per property, seed {seed}")
        for name in res.passed:
            click.echo(f"  ok    {name}")
        for name, why in res.skipped.items():
            click.echo(f"  skip  {name}: {why}")
        for v in res.violations:
            click.echo(f"  FAIL  {v.property}: {v.message}")
            click.echo("        counterexample: " + json.dumps(v.example, ensure_ascii=False))
    sys.exit(1 if res.violations else 0)


COMMANDS = [show_cmd, probe_cmd]
