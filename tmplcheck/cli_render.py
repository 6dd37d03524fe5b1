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

RENDERERS = ["hf", "llamacpp"]


class RenderError(click.ClickException):
    """The render cannot be made (llama.cpp does not know the template): exit 2, like usage errors."""

    exit_code = 2


def read_messages(source: str, stdin_text: str | None = None) -> list[dict[str, Any]]:
    """Read ``FILE.json`` (``-`` = stdin): a list of ``{role, content}`` or ``{"messages": [...]}``.

    ShareGPT ``{"from", "value"}`` messages (and a ``{"conversations": [...]}`` wrapper) are accepted and mapped to
    roles the way the dataset reader does. Raises ``click.UsageError`` with one sentence on bad input.
    """
    from tmplcheck.validator.ingest import ROLE_ALIASES

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
    if isinstance(data, dict):
        for key in ("messages", "conversations"):
            if key in data:
                data = data[key]
                break
        else:
            raise click.UsageError(f"--messages {name}: expected a list of messages or an object with a "
                                   "\"messages\" list")
    if not isinstance(data, list):
        raise click.UsageError(f"--messages {name}: expected a list of messages, got {type(data).__name__}")
    if not data:
        raise click.UsageError(f"--messages {name}: the conversation is empty")
    out = []
    for i, m in enumerate(data):
        if not isinstance(m, dict):
            raise click.UsageError(f"--messages {name}: message {i} is not an object")
        if "role" in m or "content" in m:
            role, content = m.get("role"), m.get("content")
            rest = {k: v for k, v in m.items() if k not in ("role", "content")}
        elif "from" in m or "value" in m:
            role, content = m.get("from"), m.get("value")
            role = ROLE_ALIASES.get(role.lower(), role) if isinstance(role, str) else role
            rest = {}
        else:
            raise click.UsageError(f"--messages {name}: message {i} has no \"role\"/\"content\" fields")
        if not isinstance(role, str) or not role:
            raise click.UsageError(f"--messages {name}: message {i} has no role string")
        if content is None and not rest.get("tool_calls"):
            raise click.UsageError(f"--messages {name}: message {i} has no content")
        if content is not None and not isinstance(content, (str, list)):
            raise click.UsageError(f"--messages {name}: message {i} content must be a string or a list of parts, "
                                   f"got {type(content).__name__}")
        out.append({"role": role, "content": content, **rest})
    return out


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


def warn_audit(t) -> None:
    """The static audit's findings (T010-T017, ``validator/audit.py``) as warnings on stderr; stdout stays the render."""
    from tmplcheck.validator.audit import audit_template

    for f in audit_template(t):
        click.echo(f"tmplcheck render: {f.severity.value}: {f.code} {f.message}", err=True)


def render_text(template: str, messages: list[dict], *, renderer: str = "hf", add_generation_prompt: bool = True,
                bos_token: str | None = None, eos_token: str | None = None) -> str:
    if renderer == "llamacpp":
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
    try:
        return t.render(messages, add_generation_prompt=add_generation_prompt)
    except TemplateRenderError as e:
        from tmplcheck.cli import template_refusal

        raise template_refusal(e) from None


@click.command("render")
@click.option("--template", "-t", "template", help="A built-in name, a .jinja file, a model dir, a GGUF, a hub id; "
                                                   "with --renderer llamacpp also a llama.cpp built-in name.")
@click.option("--messages", "-m", "messages", help="JSON file: a list of {role, content} or {\"messages\": [...]}; "
                                                   "- reads stdin.")
@click.option("--renderer", type=click.Choice(RENDERERS), default="hf", show_default=True,
              help="hf: the Jinja template as transformers renders it; llamacpp: llama.cpp's built-in format.")
@click.option("--no-generation-prompt", is_flag=True, help="Do not append the assistant cue at the end.")
@click.option("--bos-token", help="bos_token for the template (hf renderer).")
@click.option("--eos-token", help="eos_token for the template (hf renderer).")
@click.option("--list-llamacpp", is_flag=True, help="List llama.cpp's built-in format names and exit.")
def render_cmd(template, messages, renderer, no_generation_prompt, bos_token, eos_token, list_llamacpp):
    """Print exactly the rendered text of one conversation (nothing else on stdout)."""
    if list_llamacpp:
        click.echo("\n".join(_builtin_names()))
        return
    if not template:
        raise click.UsageError("--template is required")
    if not messages:
        raise click.UsageError("--messages is required (a JSON file, or - for stdin)")
    msgs = read_messages(messages)
    text = render_text(template, msgs, renderer=renderer, add_generation_prompt=not no_generation_prompt,
                       bos_token=bos_token, eos_token=eos_token)
    out = sys.stdout
    out.flush()
    out.buffer.write(text.encode("utf-8")) if hasattr(out, "buffer") else out.write(text)
    out.flush()


COMMANDS = [render_cmd]
