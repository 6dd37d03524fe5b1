"""The one data type every check speaks: a located finding."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Severity(str, enum.Enum):
    ERROR = "error"      # fails the gate
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 0, "warning": 1, "info": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    """One problem, located as exactly as the input allows.

    ``line`` is the 1-based line in the input file (0 when the finding is about the whole file or the template),
    ``pointer`` a JSON pointer into that line's object such as ``/conversations/2/value``.
    """

    code: str
    severity: Severity
    message: str
    path: str = ""
    line: int = 0
    pointer: str = ""
    hint: str = ""
    column: int = 0
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity.value
        from tmplcheck.validator.codes import RULES

        rule = RULES.get(self.code)
        d["name"] = rule.name if rule else ""
        if not d["data"]:
            d.pop("data")
        return d

    def sort_key(self) -> tuple:
        return (self.path, self.line, self.pointer, self.code)


def finding(code: str, message: str, *, severity: Severity | None = None, **where: Any) -> Finding:
    """Build a finding with the code's default severity from the rule table unless one is given."""
    from tmplcheck.validator.codes import RULES

    if code not in RULES:
        raise KeyError(f"unknown finding code {code!r}: add it to tmplcheck.validator.codes")
    sev = severity or RULES[code].severity
    return Finding(code=code, severity=sev, message=message, **where)
