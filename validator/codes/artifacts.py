"""A codes."""

from tmplcheck.validator.codes import Rule  # noqa: F401
from tmplcheck.validator.findings import Severity  # noqa: F401

PREFIX = "A"
RULES: list[Rule] = []
