"""``tmplcheck render``: print exactly the rendered text of one conversation, with either renderer.

Contract: stdout holds the rendered text and nothing else (no trailing newline is added); every problem is one
clear sentence on stderr: exit 1 when the template refuses the conversation (its own ``raise_exception``, or a
sandbox/size bound: the codes the gate reports, T003/T008/T009), exit 2 for usage errors and tool failures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

RENDERERS = ["hf", "llamacpp", "llamacpp-jinja"]


class RenderError(click.ClickException):
    """The render cannot be made (llama.cpp does not know the template): exit 2, like usage errors."""

    exit_code = 2


def template_args(tools: str | None, documents: str | None, template_kwargs: str | None) -> dict[str, Any]:
    """``--tools``/``--documents``/``--template-kwargs`` as every command reads them (``tmplcheck.config``)."""
    from tmplcheck.config import ConfigError, template_args as read

    try:
        return read(tools, documents, template_kwargs)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


def read_messages(source: str, stdin_text: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read ``FILE.json`` (``-`` = stdin): a list of messages, or a row ``{"messages": [...], "tools": [...], ...}``.

    Returns the messages as ``apply_chat_template`` gets them (every field kept: tool calls, reasoning...) and the
    row's template arguments (``tools``, ``documents``, ``chat_template_kwargs``). ShareGPT ``{"from", "value"}``
    messages (and a ``{"conversations": [...]}`` row) are mapped to roles by the dataset reader's table. Raises
    ``click.UsageError`` with one sentence on bad input.
    """
    from tmplcheck.validator.ingest import parse_row

    name = "stdin" if source == "-" else source
    if source == "-":
        raw = stdin_text if stdin_text is not None else sys.stdin.read()
    else:
        p = Path(source)
        if not p.is_file():
            raise click.UsageError(f"--messages {source}: no such file")
        try:
            raw = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise click.UsageError(f"--messages {name}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise click.UsageError(f"--messages {name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") \
            from None
    row = data
    if isinstance(data, dict):
        if not any(k in data for k in ("messages", "conversations")):
            raise click.UsageError(f"--messages {name}: expected a list of messages or an object with a "
                                   "\"messages\" list")
    elif isinstance(data, list):
        sharegpt = any(isinstance(m, dict) and ("from" in m or "value" in m) and "role" not in m for m in data)
        row = {"conversations" if sharegpt else "messages": data}
    else:
        raise click.UsageError(f"--messages {name}: expected a list of messages, got {type(data).__name__}")
    turns = row.get("messages", row.get("conversations"))
    if isinstance(turns, list) and not turns:
        raise click.UsageError(f"--messages {name}: the conversation is empty")
    if isinstance(turns, list):
        for i, m in enumerate(turns):
            if not isinstance(m, dict):
                raise click.UsageError(f"--messages {name}: message {i} is not an object")
            role = m.get("role", m.get("from"))
            if not isinstance(role, str) or not role:
                raise click.UsageError(f"--messages {name}: message {i} has no role string")
            c = m.get("content", m.get("value"))
            if c is not None and not isinstance(c, (str, list)):
                raise click.UsageError(f"--messages {name}: message {i} content must be a string or a list of "
                                       f"parts, got {type(c).__name__}")
    conv, found = parse_row(row, path=name, line=1)
    bad = [f for f in found if f.severity.value == "error" and f.code != "D012"]
    if conv is None or not conv.usable or bad:
        f = (bad or found)[0]
        raise click.UsageError(f"--messages {name}: {f.message}" + (f" (at {f.pointer})" if f.pointer else ""))
    return conv.dicts(), conv.render_kw()


def _builtin_names() -> list[str]:
    from tmplcheck.validator.llamacpp import UNNAMED, builtin_templates

    return builtin_templates() + list(UNNAMED)


def llama_cpp_target(spec: str) -> str:
    """What to hand llama.cpp for ``--template SPEC``: a built-in name, or the template text to detect from.

    A registry template with a llama.cpp name uses that name; a file or another loadable template gives its text;
    a bare llama.cpp built-in name (``llama3``, ``gemma``...) that is not a registry name is used as is.
    """
    from tmplcheck.templates import TemplateLoadError, load_template

    try:
        t = load_template(spec)
    except (TemplateLoadError, KeyError, OSError, ValueError) as e:
        if spec in _builtin_names():
            return spec
        raise click.UsageError(f"--template {spec}: {e}") from None
    warn_audit(t)
    return t.meta.llama_cpp or t.source


def render_llamacpp_jinja(t, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """The render of llama.cpp's own Jinja engine (``validator/llamacpp_jinja.py``) with llama-server's variables."""
    from tmplcheck.cli import Refusal
    from tmplcheck.validator.llamacpp_jinja import EngineError, EngineUnavailable, LlamaCppJinjaRenderer

    try:
        return LlamaCppJinjaRenderer.of(t).render(messages, add_generation_prompt=add_generation_prompt)
    except EngineUnavailable as e:
        raise RenderError(str(e)) from None
    except EngineError as e:
        raise Refusal(f"llama.cpp's Jinja engine refused this conversation: {e}") from None


def warn_audit(t) -> None:
    """The static audit's findings (T010-T017, ``validator/audit.py``) as warnings on stderr; stdout stays the render."""
    from tmplcheck.validator.audit import audit_template

    for f in audit_template(t):
        click.echo(f"tmplcheck render: {f.severity.value}: {f.code} {f.message}", err=True)


def render_text(template: str, messages: list[dict], *, renderer: str = "hf", add_generation_prompt: bool = False,
                bos_token: str | None = None, eos_token: str | None = None,
                template_kwargs: dict[str, Any] | None = None) -> str:
    kw = dict(template_kwargs or {})
    if renderer == "llamacpp":
        from tmplcheck.validator.crosscheck import row_features

        dropped = row_features(messages, kw)
        if dropped:
            click.echo(f"tmplcheck render: note: llama.cpp's built-in formats render role and content only; "
                       f"{', '.join(dropped)} are not in this render (X020)", err=True)
        from tmplcheck.validator.llamacpp import LlamaCppRenderer, UnsupportedTemplate

        if bos_token is not None or eos_token is not None:
            click.echo("tmplcheck render: note: llama.cpp's built-in formats ignore --bos-token/--eos-token",
                       err=True)
        target = llama_cpp_target(template)
        r = LlamaCppRenderer(target)
        try:
            out = r.render_detailed(messages, add_generation_prompt=add_generation_prompt)
        except UnsupportedTemplate:
            raise RenderError(
                f"llama.cpp does not recognise the template {template!r} (llama_chat_apply_template returned -1); "
                "give a built-in name with --template (`tmplcheck render --list-llamacpp` lists them)") from None
        if out.truncated:
            click.echo(f"tmplcheck render: note: llama.cpp cut message(s) {', '.join(map(str, out.truncated))} "
                       "at a NUL character", err=True)
        return out.text
    from tmplcheck.templates import TemplateLoadError, TemplateRenderError, load_template

    try:
        t = load_template(template)
    except (TemplateLoadError, KeyError, OSError, ValueError) as e:
        raise click.UsageError(f"--template {template}: {e}") from None
    warn_audit(t)
    if bos_token is not None or eos_token is not None:
        t = t.with_tokens(bos_token=bos_token, eos_token=eos_token)
    if renderer == "llamacpp-jinja":
        return render_llamacpp_jinja(t, messages, add_generation_prompt=add_generation_prompt)
    try:
        return t.render(messages, add_generation_prompt=add_generation_prompt, **kw)
    except TemplateRenderError as e:
        from tmplcheck.cli import template_refusal

        raise template_refusal(e) from None


@click.command("render")
@click.option("--template", "-t", "template", help="A built-in name, a .jinja file, a model dir, a GGUF, a hub id; "
                                                   "with --renderer llamacpp also a llama.cpp built-in name.")
@click.option("--messages", "-m", "messages", help="JSON file: a list of {role, content} or {\"messages\": [...]}; "
                                                   "- reads stdin.")
@click.option("--renderer", type=click.Choice(RENDERERS), default="hf", show_default=True,
              help="hf: the Jinja template as transformers renders it; llamacpp: llama.cpp's built-in format; "
                   "llamacpp-jinja: llama.cpp's own Jinja engine, as llama-server --jinja renders it.")
@click.option("--add-generation-prompt", "add_gen", is_flag=True,
              help="Append the assistant cue at the end (as apply_chat_template(add_generation_prompt=True)).")
@click.option("--no-generation-prompt", is_flag=True, hidden=True, help="The default; kept for old scripts.")
@click.option("--tools", "tools", metavar="FILE", help="JSON file with a list of tool schemas (the template's "
                                                      "`tools`); a row's own tools win.")
@click.option("--documents", "documents", metavar="FILE", help="JSON file with a list of documents.")
@click.option("--template-kwargs", "template_kwargs", metavar="JSON",
              help="Extra template arguments as a JSON object (or @FILE), e.g. '{\"enable_thinking\": false}'.")
@click.option("--bos-token", help="bos_token for the template (hf renderer).")
@click.option("--eos-token", help="eos_token for the template (hf renderer).")
@click.option("--list-llamacpp", is_flag=True, help="List llama.cpp's built-in format names and exit.")
def render_cmd(template, messages, renderer, add_gen, no_generation_prompt, tools, documents, template_kwargs,
               bos_token, eos_token, list_llamacpp):
    """Print exactly the rendered text of one conversation (nothing else on stdout)."""
    if list_llamacpp:
        click.echo("\n".join(_builtin_names()))
        return
    if not template:
        raise click.UsageError("--template is required")
    if not messages:
        raise click.UsageError("--messages is required (a JSON file, or - for stdin)")
    if add_gen and no_generation_prompt:
        raise click.UsageError("--add-generation-prompt and --no-generation-prompt contradict each other")
    msgs, row_kw = read_messages(messages)
    kw = {**template_args(tools, documents, template_kwargs), **row_kw}
    text = render_text(template, msgs, renderer=renderer, add_generation_prompt=add_gen,
                       bos_token=bos_token, eos_token=eos_token, template_kwargs=kw)
    out = sys.stdout
    out.flush()
    out.buffer.write(text.encode("utf-8")) if hasattr(out, "buffer") else out.write(text)
    out.flush()


COMMANDS = [render_cmd]
