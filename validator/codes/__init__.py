"""The one table of finding codes.

Each family lives in its own module (D dataset, T template, X cross-renderer, K tokens, M masks/training,
L labels of a tokenized dataset, A artifacts in generations) so that the table stays readable; this module joins them and guarantees that a code is
defined once and never reused. ``tmplcheck rule CODE`` prints a rule's explanation.
"""

from __future__ import annotations

from dataclasses import dataclass

from tmplcheck.validator.findings import Severity


@dataclass(frozen=True)
class Rule:
    code: str
    name: str            # kebab-case name of the bad pattern
    severity: Severity   # default severity
    summary: str         # one line
    explanation: str     # what, why it hurts training, example, fix
    fixture: str = ""    # fixture under fixtures/ that triggers it (relative path)
    #: a property of the template/tokenizer pair, not of a row: the gate reports it once per file, with the number
    #: of rows it applies to and the first few line numbers (``validator/gate.py: PerFileFolder``)
    per_file: bool = False

    def render(self) -> str:
        return (
            f"{self.code} ({self.name}) [{self.severity.value}]\n\n{self.summary}\n\n{self.explanation.strip()}\n"
            + (f"\nReported once per file (a property of the template/tokenizer pair), with the number of rows "
               f"it applies to and the first line numbers.\n" if self.per_file else "")
            + (f"\nFixture: fixtures/{self.fixture}\n" if self.fixture else "")
        )


def _load() -> dict[str, Rule]:
    from tmplcheck.validator.codes import artifacts, bounds, cross, dataset, labels, masks, serving, template, tokens

    table: dict[str, Rule] = {}
    for mod in (dataset, bounds, template, cross, tokens, masks, labels, artifacts, serving):
        for rule in mod.RULES:
            if rule.code in table:
                raise RuntimeError(f"finding code {rule.code} defined twice")
            if rule.code[0] != mod.PREFIX:
                raise RuntimeError(f"finding code {rule.code} is in the {mod.PREFIX} family module")
            table[rule.code] = rule
    return dict(sorted(table.items()))


RULES: dict[str, Rule] = _load()


def rules_by_name() -> dict[str, Rule]:
    return {r.name: r for r in RULES.values()}


def resolve(code_or_name: str) -> Rule | None:
    key = code_or_name.strip()
    return RULES.get(key.upper()) or rules_by_name().get(key.lower())


def matches(code: str, selectors: list[str]) -> bool:
    """``D`` selects a family, ``D1`` a prefix, ``D101`` one code, ``invalid-json`` a name."""
    name = RULES[code].name if code in RULES else ""
    for s in selectors:
        s = s.strip()
        if not s:
            continue
        if s.upper() == "ALL" or code.startswith(s.upper()) or s.lower() == name:
            return True
    return False
