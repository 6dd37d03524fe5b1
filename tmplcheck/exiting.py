"""How the console script ends its process (``tmplcheck.cli.main``)."""

from __future__ import annotations

import sys

__all__ = ["leave"]


def leave(code: object = 0) -> None:
    """End the process with ``code`` once the command is done: flush the output, join the threads still running and
    run the exit handlers as a normal exit does, then skip the interpreter's teardown (freeing every module's objects
    one by one: ~0.2 s after a gate run, mostly llama.cpp's vocabulary and the Rust tokenizer, memory the operating
    system takes back at once). ``TMPLCHECK_FULL_EXIT=1`` keeps the normal exit."""
    import os

    if isinstance(code, str):      # sys.exit("message"): the message on stderr, status 1
        print(code, file=sys.stderr)
        code = 1
    elif not isinstance(code, int):
        code = 0 if code is None else 1
    if os.environ.get("TMPLCHECK_FULL_EXIT") == "1":
        sys.exit(code)
    import atexit
    import threading

    try:
        threading._shutdown()      # joins non-daemon threads, as the interpreter does before the exit handlers
    except Exception:  # noqa: BLE001 - a private hook: without it the exit is a normal one
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(code)
