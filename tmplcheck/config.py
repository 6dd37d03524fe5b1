"""One settings model for every command: ``[tool.tmplcheck]`` in pyproject.toml or tmplcheck.toml, then flags.

``check``, ``show``, ``probe``, ``train`` and ``report`` read the same file the same way (``--config FILE``, else the
nearest tmplcheck.toml / ``[tool.tmplcheck]`` from the dataset's folder upwards, else from the working directory)
and take the same check flags (:func:`check_options`). :meth:`Settings.stage_config` is the one place that turns
them into the gate's configuration, so the configuration an approval stamp pins is the same whether a setting came
from the file or from a flag, and ``train`` recomputes exactly what ``check --approve`` stamped.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

KNOWN = {
    "template", "tokenizer", "max_length", "format", "select", "ignore", "exit_zero", "max_findings",
    "input_format", "max_line_bytes", "group", "jobs", "add_special_tokens", "for_train",
    "tools", "documents", "template_kwargs", "train_on",
}

#: the note K005 carries under ``for_train``: the trainer writes the stop set, so the base model's own is not final
FOR_TRAIN_NOTE = ("info under --for-train: `tmplcheck train` writes every end-of-turn id into the saved "
                  "generation config, and `tmplcheck report` checks that it did")


class ConfigError(ValueError):
    pass


def find_config(start: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """Search from ``start`` upwards for tmplcheck.toml or a pyproject.toml with [tool.tmplcheck]."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        own = d / "tmplcheck.toml"
        if own.is_file():
            return own, _load(own, tool_table=False)
        py = d / "pyproject.toml"
        if py.is_file():
            data = _load(py, tool_table=True)
            if data is not None:
                return py, data
    return None


def config_file_for(data: str | Path | None = None, explicit: str | Path | None = None
                    ) -> tuple[Path | None, dict[str, Any]]:
    """(the settings file, its settings) for a run on DATA: the ``explicit`` file if given, else the nearest
    tmplcheck.toml or ``[tool.tmplcheck]`` from DATA's folder upwards, else from the working directory."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"--config {p}: no such file")
        return p, _load(p, tool_table=p.name == "pyproject.toml") or {}
    found = (find_config(Path(data).resolve().parent) if data else None) or find_config()
    return found if found else (None, {})


def settings_for(data: str | Path | None = None, explicit: str | Path | None = None) -> dict[str, Any]:
    """The file settings for a run on DATA as a dict ({} when there is no settings file)."""
    return config_file_for(data, explicit)[1]


def _load(path: Path, tool_table: bool) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if tool_table:
        data = data.get("tool", {}).get("tmplcheck")
        if data is None:
            return None
    out = {}
    for k, v in data.items():
        key = k.replace("-", "_")
        if key not in KNOWN:
            raise ConfigError(f"{path}: unknown setting {k!r} (known: {', '.join(sorted(KNOWN))})")
        out[key] = v
    for k in ("select", "ignore"):
        if k in out and isinstance(out[k], str):
            out[k] = [s.strip() for s in out[k].split(",") if s.strip()]
        if k in out and not (isinstance(out[k], list) and all(isinstance(s, str) for s in out[k])):
            raise ConfigError(f"{path}: {k} must be a list of codes (or a comma-separated string)")
    if "add_special_tokens" in out:
        v = out["add_special_tokens"]
        v = {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v
        if v not in ("auto", "yes", "no"):
            raise ConfigError(f"{path}: add_special_tokens must be auto, yes or no, not {v!r}")
        out["add_special_tokens"] = v
    for k in ("max_length", "max_line_bytes", "max_findings", "jobs"):
        if k in out and (not isinstance(out[k], int) or isinstance(out[k], bool) or out[k] < 1):
            raise ConfigError(f"{path}: {k} must be a positive integer, not {out[k]!r}")
    if "train_on" in out and out["train_on"] not in ("all-assistant", "last-assistant"):
        raise ConfigError(f"{path}: train_on must be all-assistant or last-assistant, not {out['train_on']!r}")
    for k in ("exit_zero", "for_train"):
        if k in out and not isinstance(out[k], bool):
            raise ConfigError(f"{path}: {k} must be true or false, not {out[k]!r}")
    return out


# --------------------------------------------------------------------------------------------------- the settings
def split_codes(values) -> list[str]:
    """``("D,K", "X001")`` → ``["D", "K", "X001"]``."""
    if isinstance(values, str):
        values = [values]
    return [s.strip() for v in values or () for s in str(v).split(",") if s.strip()]


def normalize_selectors(values) -> list[str]:
    """Selectors as the gate reads them, whichever way they were written: a name becomes its code, codes and
    prefixes are upper case, duplicates go, order does not matter. Raises ConfigError for one that matches no
    code."""
    from tmplcheck.validator.codes import RULES, matches, rules_by_name

    names = rules_by_name()
    out = set()
    for s in split_codes(values):
        if s.upper() == "ALL":
            out.add("ALL")
            continue
        if not any(matches(c, [s]) for c in RULES):
            raise ConfigError(f"--select/--ignore: {s!r} matches no finding code")
        out.add(names[s.lower()].code if s.lower() in names else s.upper())
    return sorted(out)


@dataclass
class Settings:
    """What every command reads: the check settings (they decide what the gate reports, and a stamp pins them)
    plus the output settings of ``check``. ``source`` is the settings file they came from, if any."""

    template: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    add_special_tokens: str = "auto"
    for_train: bool = False
    input_format: str | None = None
    max_line_bytes: int | None = None
    jobs: int | None = None
    format: str = "text"
    exit_zero: bool = False
    max_findings: int | None = None
    group: str = "line"
    #: template arguments for rows without their own: a JSON file of tool schemas, a JSON file of documents, and a
    #: JSON object (inline, ``@FILE``, or a TOML table in the settings file)
    tools: str | None = None
    documents: str | None = None
    template_kwargs: Any = None
    #: the assistant turns trained when a message has no ``weight``/``train`` flag: all-assistant | last-assistant
    train_on: str = "all-assistant"
    source: Path | None = None

    @classmethod
    def resolve(cls, data: str | Path | None = None, config: str | Path | None = None, **flags: Any) -> "Settings":
        """File settings (``config``, else the search from DATA), overridden by every flag that was given (not
        None, not empty)."""
        source, conf = config_file_for(data, config)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "source":
                continue
            flag = flags.get(f.name)
            if f.name in ("select", "ignore"):
                flag = split_codes(flag) if flag else None
            if flag not in (None, (), [], ""):
                values[f.name] = flag
            elif f.name in conf:
                values[f.name] = conf[f.name]
                if f.name in ("template", "tokenizer") and source is not None and isinstance(conf[f.name], str):
                    # a path in the settings file is relative to the file, whatever the working directory
                    near = source.parent / conf[f.name]
                    if not Path(conf[f.name]).is_absolute() and near.exists():
                        values[f.name] = str(near)
        unknown = set(flags) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}")
        s = cls(**values, source=source)
        s.select = normalize_selectors(s.select)
        s.ignore = normalize_selectors(s.ignore)
        return s

    # ---------------------------------------------------------------------------------------------- the gate
    def render_defaults(self) -> dict[str, Any]:
        """The template arguments every row without its own gets (``apply_chat_template(..., tools=...,
        documents=..., **kwargs)``), read from ``tools``/``documents``/``template_kwargs``; raises ConfigError."""
        return template_args(self.tools, self.documents, self.template_kwargs, base=self.source)

    def check_settings(self) -> dict[str, Any]:
        """The settings that change what the gate decides, in the form a stamp records (defaults left out)."""
        extra: dict[str, Any] = {"select": list(self.select), "ignore": list(self.ignore)}
        args = self.render_defaults()
        if args:
            import hashlib
            import json

            extra["template_args"] = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()
        if self.add_special_tokens != "auto":
            extra["add_special_tokens"] = {"yes": True, "no": False}[self.add_special_tokens]
        if self.for_train:
            extra["for_train"] = True
        if self.train_on != "all-assistant":
            extra["train_on"] = self.train_on
        return extra

    def stage_config(self, **override: Any):
        """The gate's ``StageConfig`` (template, tokenizer, max_length, and the check settings in ``extra``)."""
        from tmplcheck.validator.stages import StageConfig

        extra = {"jobs": self.jobs, **self.check_settings()}
        if self.render_defaults():
            extra["render_defaults"] = self.render_defaults()
        cfg = StageConfig(template=self.template, tokenizer=self.tokenizer, max_length=self.max_length, extra=extra)
        for k, v in override.items():
            setattr(cfg, k, v)
        return cfg

    def gate_options(self, **kw: Any):
        """``GateOptions`` with these settings' select/ignore, input format, line bound and severity changes."""
        from tmplcheck.validator.gate import GateOptions

        opts = GateOptions(input_format=self.input_format, train_on=self.train_on,
                           select=list(self.select), ignore=list(self.ignore),
                           severity=severity_overrides(self.for_train), render_defaults=self.render_defaults(), **kw)
        if self.max_line_bytes:
            opts.max_line_bytes = self.max_line_bytes
        return opts

    def keeps(self, code: str) -> bool:
        """Whether a finding of ``code`` survives --select/--ignore."""
        from tmplcheck.validator.codes import matches

        if self.select and not matches(code, self.select):
            return False
        return not (self.ignore and matches(code, self.ignore))


def _json_arg(value: Any, what: str, want: type, base: Path | None) -> Any:
    """A template argument: already a value (from a TOML table), inline JSON (``template_kwargs``), or a JSON file
    (``tools``, ``documents``, ``@FILE``), relative to the settings file when it came from one."""
    import json

    if not isinstance(value, str):
        data = value
    else:
        text = value
        if what != "template_kwargs" or value.startswith("@"):
            p = Path(value[1:] if value.startswith("@") else value)
            if not p.is_absolute() and base is not None and not p.exists():
                p = base.parent / p
            if not p.is_file():
                raise ConfigError(f"--{what.replace('_', '-')} {value}: no such file")
            text = p.read_text(encoding="utf-8-sig")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--{what.replace('_', '-')}: invalid JSON at line {e.lineno} column {e.colno}: "
                              f"{e.msg}") from None
    if want is list and isinstance(data, dict) and isinstance(data.get(what), list):
        data = data[what]   # {"tools": [...]} as well as [...]
    if not isinstance(data, want):
        raise ConfigError(f"--{what.replace('_', '-')}: expected a JSON {'list' if want is list else 'object'}, "
                          f"got {type(data).__name__}")
    return data


def template_args(tools: Any = None, documents: Any = None, template_kwargs: Any = None, *,
                  base: Path | None = None) -> dict[str, Any]:
    """The template arguments every row without its own gets, from ``--tools FILE``, ``--documents FILE`` and
    ``--template-kwargs JSON`` (a row's own ``tools``/``documents``/``chat_template_kwargs`` win over them)."""
    kw: dict[str, Any] = {}
    if template_kwargs not in (None, "", {}):
        kw.update(_json_arg(template_kwargs, "template_kwargs", dict, base))
    if tools:
        kw["tools"] = _json_arg(tools, "tools", list, base)
    if documents:
        kw["documents"] = _json_arg(documents, "documents", list, base)
    return kw


def severity_overrides(for_train: bool) -> dict:
    """``GateOptions.severity`` for ``--for-train``: K005 (end-of-turn not a stop id of the tokenizer's generation
    config) becomes an info, because ``tmplcheck train`` writes the stop set itself."""
    from tmplcheck.validator.findings import Severity

    return {"K005": (Severity.INFO, FOR_TRAIN_NOTE)} if for_train else {}


def check_options(*, max_length: bool = True, for_train: bool = True, add_special_tokens: bool = True,
                  template_args: bool = False, train_on: bool = False):
    """The check flags every command takes, the same names and meanings: --config, --select, --ignore,
    --max-length, --add-special-tokens (and --for-train where the command runs the gate)."""
    import click

    def deco(f):
        opts = [
            click.option("--config", "config_path", type=click.Path(dir_okay=False),
                         help="Read settings from this TOML file instead of searching for tmplcheck.toml / "
                              "[tool.tmplcheck] from the dataset's folder upwards."),
            click.option("--select", multiple=True, help="Only these codes, families (D, K) or names; "
                                                         "comma-separated."),
            click.option("--ignore", multiple=True, help="Drop these codes, families or names; comma-separated."),
        ]
        if train_on:
            opts.append(click.option("--train-on", "train_on", type=click.Choice(["all-assistant", "last-assistant"]),
                                     help="Which assistant turns are trained when a message has no `weight`/"
                                          "`train` flag of its own: every one (default) or only the row's last."))
        if add_special_tokens:
            opts.append(click.option("--add-special-tokens", "add_special", type=click.Choice(["auto", "yes", "no"]),
                         help="How your training pipeline tokenizes the render: auto = like apply_chat_template and "
                              "`tmplcheck train` (no tokenizer BOS when the template writes one); yes = "
                              "tokenizer(text), e.g. a trainer fed pre-rendered text; no = never add special "
                              "tokens."))
        if max_length:
            opts.append(click.option("--max-length", type=int, help="Flag rows longer than N tokens and the turn "
                                                                    "that loses its end-of-turn."))
        if for_train:
            opts.append(click.option("--for-train", is_flag=True, default=None,
                                     help="The data is for `tmplcheck train`, which writes every end-of-turn id "
                                          "into the saved generation config: an end-of-turn id missing from the "
                                          "base model's stop set (K005) is an info, not an error."))
        if template_args:
            opts += [
                click.option("--tools", "tools", metavar="FILE",
                             help="JSON file with the tool schemas rows without their own `tools` are rendered with."),
                click.option("--documents", "documents", metavar="FILE",
                             help="JSON file with the documents rows without their own are rendered with."),
                click.option("--template-kwargs", "template_kwargs", metavar="JSON",
                             help="Extra template arguments as a JSON object (or @FILE), e.g. "
                                  "'{\"enable_thinking\": false}'; a row's chat_template_kwargs win."),
            ]
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


def resolve_or_exit(data, config_path, **flags) -> Settings:
    """``Settings.resolve`` for a command: a bad settings file or selector is a usage error (exit 2)."""
    import click

    try:
        st = Settings.resolve(data, config_path, **flags)
        st.render_defaults()   # a bad --tools/--documents/--template-kwargs is a usage error now, not mid-run
        return st
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
