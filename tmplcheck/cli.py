"""Command line: ``tmplcheck DATA`` (the gate) plus render, convert, probe, show, train, scan, report, rule...

Exit codes (contract): 0 no error findings, 1 error findings, 2 usage error or the tool itself failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tmplcheck import __version__
from tmplcheck.config import check_options, resolve_or_exit

FORMATS = ["text", "json", "jsonl", "junit", "sarif", "github"]


class DefaultGroup(click.Group):
    """``tmplcheck data.jsonl`` means ``tmplcheck check data.jsonl``."""

    default_cmd = "check"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_cmd, *args]
        elif not args:
            args = ["--help"]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tmplcheck")
def cli():
    """Catch broken chat templates before fine-tuning, and prove it after.

    \b
    tmplcheck DATA.jsonl [--template T] [--tokenizer K]   check a dataset (the CI gate)
    tmplcheck rule D013                                     explain a finding code
    """


class Refusal(click.ClickException):
    """The data, or the template on this data, fails a check (the template's own ``raise_exception``, a row that
    cannot be read): exit 1, as the gate exits on error findings. Usage errors and tool failures exit 2."""

    exit_code = 1


class ToolFailure(click.ClickException):
    """The tool itself could not do the job (not a finding about the data): exit 2."""

    exit_code = 2


#: what each kind of ``TemplateRenderError`` is as a finding (the gate's template stage reports the same codes)
_RENDER_ERROR_CODES = {"raise": "T003", "undefined": "T003", "error": "T003", "security": "T008",
                       "timeout": "T009", "size": "T009"}


def template_refusal(err, where: str = "") -> click.ClickException:
    """A ``TemplateRenderError`` as a command's exit: the template refusing (or failing on) this conversation is
    a finding, exit 1 (T003/T008/T009, as the gate reports it); a mask asked of a template without
    ``{% generation %}`` markers is a usage problem, exit 2."""
    code = _RENDER_ERROR_CODES.get(getattr(err, "kind", ""))
    prefix = f"{where}: " if where else ""
    if code is None:
        return ToolFailure(f"{prefix}cannot render this conversation: {err}")
    what = "refused" if err.kind == "raise" else "failed on"
    line = f" (template line {err.lineno})" if getattr(err, "lineno", None) else ""
    return Refusal(f"{prefix}the template {what} this conversation{line}: {err} [{code}]")


def write_output(text, output: str | None) -> None:
    """Write a report (a string or an iterator of chunks) to FILE atomically, or to stdout as it comes."""
    chunks = [text] if isinstance(text, str) else text
    if output:
        from tmplcheck.fsutil import write_atomic

        write_atomic(output, chunks)
    else:
        for chunk in chunks:
            if chunk:
                click.echo(chunk, nl=False)


def missing_extra(extra: str, what: str, err: ImportError) -> click.ClickException:
    return click.ClickException(
        f"{what} needs the '{extra}' extra ({err.name or err} is not installed): "
        f"pip install 'tmplcheck[{extra}]'")


def load_template_option(spec: str):
    """``--template SPEC`` → Template; a spec that cannot load is a usage error (exit 2), never a traceback."""
    from tmplcheck.templates import TemplateLoadError, load_template

    try:
        return load_template(spec)
    except TemplateLoadError as e:
        raise click.UsageError(f"--template {spec}: {e}") from None


def load_tokenizer_option(spec: str):
    """``--tokenizer SPEC`` → Tokenizer; a spec that cannot load is a usage error (exit 2)."""
    try:
        from tmplcheck.validator.tokenizer import TokenizerLoadError, load_tokenizer
    except ImportError as e:
        raise missing_extra("hf", "--tokenizer", e) from None
    try:
        return load_tokenizer(spec)
    except ImportError as e:
        raise missing_extra("hf", "--tokenizer", e) from None
    except TokenizerLoadError as e:
        raise click.UsageError(f"--tokenizer {spec}: {e}") from None


@cli.command("check")
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--template", "-t", help="Template: a built-in name, a .jinja file, a model dir, a GGUF, a hub id.")
@click.option("--tokenizer", "-k", help="Tokenizer: a built-in name, a model dir, tokenizer.json, a GGUF, a hub id.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Output format (default text).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to FILE (atomically).")
@click.option("--exit-zero", is_flag=True, default=None, help="Exit 0 even when errors are found.")
@click.option("--max-findings", type=int, help="Show at most N findings (all are still counted).")
@click.option("--input-format", type=click.Choice(["sharegpt", "openai", "alpaca"]), help="Force the row format.")
@click.option("--max-line-bytes", type=int, help="Skip (and report) lines larger than this (default 10 MiB).")
@click.option("--group", type=click.Choice(["line", "code"]), help="Group text output by line or by code.")
@click.option("--approve", is_flag=True, help="On success write an approval stamp next to the dataset "
                                              "(needs a template and a tokenizer).")
@click.option("--jobs", "-j", type=int, help="Worker processes for large files (default: all cores).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: the per-chunk work as Ray Data tasks on a Ray cluster (DATA may also be URIs of JSONL or "
                   "parquet files that pyarrow reads: s3://, gs://...); the same findings as local.")
@click.option("--ray-address", help="The Ray cluster for --engine ray (default: RAY_ADDRESS, else a local one).")
@check_options(template_args=True, train_on=True)
def check_cmd(data, template, tokenizer, max_length, fmt, output, select, ignore, exit_zero, max_findings,
              input_format, max_line_bytes, group, add_special, approve, jobs, engine, ray_address, config_path,
              for_train, tools, documents, template_kwargs, train_on):
    """Check DATA and exit 0 clean, 1 findings, 2 error.

    DATA: JSONL or a .json list of rows, a parquet or Arrow file, a datasets save_to_disk folder, or a dataset id
    in the local Hugging Face cache (read offline). Rows are ShareGPT, OpenAI or Alpaca."""
    from tmplcheck.validator.gate import run_gate, run_source
    from tmplcheck.validator.sources import SourceError, open_source
    from tmplcheck.validator.report import report_chunks
    from tmplcheck.validator.stages import build_stages
    from tmplcheck.validator.render import TemplateLoadError
    from tmplcheck.validator.tokenizer import TokenizerLoadError

    st = resolve_or_exit(data[0], config_path, template=template, tokenizer=tokenizer, max_length=max_length,
                         format=fmt, select=select, ignore=ignore, exit_zero=exit_zero, max_findings=max_findings,
                         input_format=input_format, max_line_bytes=max_line_bytes, group=group,
                         add_special_tokens=add_special, jobs=jobs, for_train=for_train, tools=tools,
                         documents=documents, template_kwargs=template_kwargs, train_on=train_on)
    if approve and (st.template is None or st.tokenizer is None):
        raise click.UsageError("--approve needs --template and --tokenizer (or both in the settings file): a stamp "
                               "vouches for the template and mask checks, which need both")
    sources = []
    for d in data if engine == "local" else ():   # --engine ray opens them where it reads them (URIs too)
        try:
            sources.append(open_source(d, display_path=d, input_format=st.input_format,
                                       max_line_bytes=st.max_line_bytes))
        except SourceError as e:
            raise (click.UsageError if "no such file" in str(e) else ToolFailure)(str(e)) from None
        except ImportError as e:
            raise missing_extra("hf", f"reading {d}", e) from None
    if approve and any(s.objects for s in sources):
        raise click.UsageError("--approve stamps JSONL files (what `tmplcheck train` reads); check the JSONL export "
                               "of this dataset to approve it")
    stage_cfg = st.stage_config()
    try:
        stages = build_stages(stage_cfg)
    except ImportError as e:
        raise missing_extra("hf", "--tokenizer", e) from None
    except TemplateLoadError as e:
        raise click.UsageError(f"--template: {e}") from None
    except TokenizerLoadError as e:
        raise click.UsageError(f"--tokenizer: {e}") from None
    opts = st.gate_options(stages=stages)
    results = []
    if engine == "ray":
        from tmplcheck.ray_engine import RayEngineError, check_paths_ray

        try:
            results = check_paths_ray(list(data), st, address=ray_address, stages=stages)
        except RayEngineError as e:
            raise (click.UsageError if "no such file" in str(e) else ToolFailure)(str(e)) from None
        if approve and any("source" in r.summary for r in results):
            raise click.UsageError("--approve stamps JSONL files (what `tmplcheck train` reads)")
    for d, src in zip(data, sources):
        p = Path(d)
        if not src.objects and p.is_file():
            with _progress(p) as opts.progress:
                results.append(run_gate(p, opts, display_path=d))
            continue
        try:
            results.append(run_source(src, opts))
        except SourceError as e:
            raise ToolFailure(str(e)) from None
    color = st.format == "text" and output is None and sys.stdout.isatty()
    write_output(report_chunks(st.format, results, max_findings=st.max_findings, group=st.group, color=color),
                 output)
    if approve:
        from tmplcheck.validator.approval import StampError, write_stamps

        for r in results:
            if r.passed:
                try:
                    stamp = write_stamps(r, stage_cfg)
                except StampError as e:
                    raise click.ClickException(str(e)) from None
                click.echo(f"approved: {stamp}", err=True)
    code = 0 if st.exit_zero else max(r.exit_code for r in results)
    sys.exit(code)


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(path: Path, min_bytes: int = 8 << 20):
    """A rich progress line on stderr for large files when stderr is a terminal; nothing otherwise."""
    if not sys.stderr.isatty() or path.stat().st_size < min_bytes:
        return _NoProgress()
    from contextlib import contextmanager

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    @contextmanager
    def cm():
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed} rows"),
                      TimeElapsedColumn(), console=Console(stderr=True), transient=True) as prog:
            task = prog.add_task(f"checking {path.name}", total=None)
            yield lambda n: prog.update(task, completed=n)

    return cm()


@cli.command("rule")
@click.argument("code", required=False)
@click.option("--all", "show_all", is_flag=True, help="List every code.")
def rule_cmd(code, show_all):
    """Explain a finding CODE (or name); with no CODE, list them all."""
    from tmplcheck.validator.codes import RULES, resolve

    if code and not show_all:
        r = resolve(code)
        if r is None:
            raise click.UsageError(f"unknown code {code!r}; `tmplcheck rule` lists them")
        click.echo(r.render(), nl=False)
        return
    for r in RULES.values():
        click.echo(f"{r.code}  {r.severity.value:<7}  {r.name:<32}  {r.summary}")


@cli.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="JSONL file to write.")
@click.option("--user-column", required=True, help="CSV column with the user turn.")
@click.option("--assistant-column", required=True, help="CSV column with the assistant turn.")
@click.option("--system", help="A system prompt for every row.")
@click.option("--system-column", help="CSV column with a per-row system prompt.")
@click.option("--format", "fmt", type=click.Choice(["sharegpt", "openai"]), default="sharegpt", show_default=True)
@click.option("--encoding", default="utf-8-sig", show_default=True, help="Input encoding (a BOM is accepted).")
@click.option("--delimiter", default=",", show_default=True)
def convert_cmd(src, output, user_column, assistant_column, system, system_column, fmt, encoding, delimiter):
    """Convert a CSV file to JSONL that passes `tmplcheck` unchanged."""
    from tmplcheck.validator.convert import ConvertError, convert_csv

    try:
        res = convert_csv(src, output, user_column=user_column, assistant_column=assistant_column, system=system,
                          system_column=system_column, fmt=fmt, encoding=encoding, delimiter=delimiter)
    except ConvertError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {res.rows} rows to {res.output}", err=True)


def _register_optional_commands() -> None:
    """Commands that live in their own modules: every tmplcheck/cli_<area>.py with a COMMANDS list."""
    import importlib
    import pkgutil

    import tmplcheck

    for info in sorted(pkgutil.iter_modules(tmplcheck.__path__), key=lambda i: i.name):
        if info.name.startswith("cli_"):
            m = importlib.import_module(f"tmplcheck.{info.name}")
            for c in m.COMMANDS:
                cli.add_command(c)


_register_optional_commands()


def main() -> None:
    """The console script: the command, then ``tmplcheck.exiting.leave`` with its exit status."""
    from tmplcheck.exiting import leave

    try:
        _main()
    except SystemExit as e:
        leave(e.code)
    leave(0)


def _main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(1 if isinstance(e, Refusal) else 2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:  # the tool itself failed: say so, exit 2, never 1
        click.echo(f"tmplcheck: internal error: {type(e).__name__}: {e}", err=True)
        sys.exit(2)
