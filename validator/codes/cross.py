"""X codes."""

from tmplcheck.validator.codes import Rule  # noqa: F401
from tmplcheck.validator.findings import Severity  # noqa: F401

PREFIX = "X"
RULES: list[Rule] = []
