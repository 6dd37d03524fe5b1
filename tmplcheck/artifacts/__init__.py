"""Post-training artifact report: scan generations for leaked template artifacts (A codes), generate on a run's
held-out prompts, and write report.json / report.html."""

from tmplcheck.artifacts.patterns import ArtifactPatterns, patterns_for
from tmplcheck.artifacts.scan import Generation, parse_thresholds, scan_file, scan_generation, scan_rows

__all__ = ["ArtifactPatterns", "Generation", "parse_thresholds", "patterns_for", "scan_file", "scan_generation",
           "scan_rows"]
