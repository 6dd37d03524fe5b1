"""tmplcheck: catch broken chat templates before fine-tuning, and prove it after.

Layout: ``tmplcheck.validator`` (ingest → render → tokens → checks → report → gate),
``tmplcheck.templates`` (named built-in templates), ``tmplcheck.trainer`` (approved data only).
"""

__version__ = "0.1.0"

__all__ = ["check", "Result", "__version__"]


def __getattr__(name: str):
    """``tmplcheck.check`` and ``tmplcheck.Result`` (tmplcheck/api.py), imported when first used, so that
    ``import tmplcheck`` stays light."""
    if name in ("check", "Result", "CheckFailed"):
        from tmplcheck import api

        return getattr(api, name)
    raise AttributeError(f"module 'tmplcheck' has no attribute {name!r}")
