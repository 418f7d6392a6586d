"""The commands' entry points: ``python -m m2_code_store`` is ``m2-code-store``; the console scripts
``m2-code-store`` and ``write_csv_to_redis`` start here too.

This module imports nothing heavy. A command's own modules (Redis, Arrow, numpy, Flask) take a few
tenths of a second to import; a Ctrl-C meanwhile, or while its arguments are read, ends the command
with one log line and status 130 instead of a traceback. The loader and serve then handle Ctrl-C
themselves (the loader says what the store holds, serve stops its server); for the other commands
(lookup, stats), a Ctrl-C is one line and status 130 too.
"""

import signal
import sys
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _starting(command: str, step: Callable[[], T]) -> T:
    """*step* of *command*'s start; a Ctrl-C during it ends the command with one line and status 130."""
    try:
        return step()
    except KeyboardInterrupt:
        _say_interrupted(command)
        raise SystemExit(130) from None


def _say_interrupted(command: str, message: str = "interrupted while starting, before it did anything") -> None:
    """The line, in the commands' log format (plain at a terminal, JSON otherwise: cron's log), written
    without importing anything: the interrupted import may have been one this would need."""
    message = f"{command}: {message}"
    try:
        if sys.stderr.isatty():
            line = f"{time.strftime('%H:%M:%S')} error: {message}"
        else:
            line = f'{{"time": "{time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}", "level": "error", "message": "{message}"}}'
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr (None), or a closed one: the status says it
        pass


def main() -> int:
    """``m2-code-store``: for ``serve``, SIGHUP (a reload) is ignored from the first instant, before
    the command's imports; serve then passes it on to the server once that can take it."""
    if sys.argv[1:2] == ["serve"]:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def start() -> Callable[[], int]:
        from m2_code_store import cli

        return cli.command(sys.argv[1:])

    command = _starting("m2-code-store", start)
    try:
        status = command()
    except KeyboardInterrupt:  # a command that does not handle it itself (lookup, stats): it changes nothing
        _say_interrupted("m2-code-store", "interrupted")
        return 130
    if sys.argv[1:2] == ["load"]:  # as write_csv_to_redis does: no interpreter teardown after a load
        from m2_code_store.write_csv_to_redis import exit_now

        exit_now(status)
    return status


def write_csv_to_redis() -> None:
    """``write_csv_to_redis``: the loader (:mod:`m2_code_store.write_csv_to_redis`)."""

    def start() -> Callable[[], int]:
        from m2_code_store import write_csv_to_redis as loader

        args = loader.parse_args(sys.argv[1:])
        return lambda: loader.run(args)

    load = _starting("write_csv_to_redis", start)
    from m2_code_store.write_csv_to_redis import exit_now

    exit_now(load())


if __name__ == "__main__":
    sys.exit(main())
