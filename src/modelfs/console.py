"""What a user sees of a command: its log lines, its one-line errors and its exit code.

Exit codes, for every command: 0 success; 1 a runtime failure (store down, access denied, an
upload that failed); 2 bad input (usage, config, mountpoint, a path in the way), which retrying
will not fix. A `ModelfsError` says which it is (`bad_input`). Every error is one line on
stderr, `modelfs: error: ...`; a traceback only with `--verbose`.

Two forms of logging: a long-running process (the mount daemon) logs with time, level and
logger, to its log file or stderr; a command that talks to its user while it works (`run`)
prints `modelfs run: message` lines, which interleave readably with the app's own output.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from modelfs.errors import ModelfsError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
# Libraries whose INFO lines say nothing a user can act on.
_QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")

log = logging.getLogger("modelfs")


def exit_code(exc: BaseException) -> int:
    return EXIT_BAD_INPUT if isinstance(exc, ModelfsError) and exc.bad_input else EXIT_FAILURE


def fail(exc: BaseException, *, verbose: bool = False) -> int:
    """Print `exc` as the command's one error line; its exit code."""
    if verbose:
        log.error("failed", exc_info=exc)
    error_line(str(exc))
    return exit_code(exc)


def error_line(message: str) -> None:
    print(f"modelfs: error: {message}", file=sys.stderr, flush=True)


def warning_line(message: str) -> None:
    print(f"modelfs: warning: {message}", file=sys.stderr, flush=True)


def setup_logging(
    *,
    level: str = "INFO",
    log_file: str | None = None,
    verbose: bool = False,
    command: str | None = None,
) -> None:
    """The daemon form (to `log_file`, else stderr), or with `command` the form of a command
    talking to its user (stderr; left alone if logging is configured already, as under
    pytest)."""
    if command is not None:
        logger = logging.getLogger("modelfs")
        if logging.getLogger().handlers or logger.handlers:
            return
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"modelfs {command}: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        return
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else getattr(logging, level))
    for noisy in _QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
