"""tmplcheck: catch broken chat templates before fine-tuning, and prove it after.

Layout: ``tmplcheck.validator`` (ingest → render → tokens → checks → report → gate),
``tmplcheck.templates`` (named built-in templates), ``tmplcheck.trainer`` (approved data only).
"""

__version__ = "0.1.0"
