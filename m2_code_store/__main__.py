"""The commands' entry points: ``python -m m2_code_store`` is ``m2-code-store``; the console scripts
``m2-code-store`` and ``write_csv_to_redis`` start here too.

This module imports nothing heavy: the commands' own modules (Redis, Arrow, numpy, Flask) take a
few tenths of a second to import, and a Ctrl-C meanwhile ends the command with one line and status
130 instead of a traceback from somewhere inside an import.
"""

import importlib
import signal
import sys
from types import ModuleType


def _imported(name: str, command: str) -> ModuleType:
    """Module *name*, imported; a Ctrl-C during the import ends *command* with one line and status 130."""
    try:
        return importlib.import_module(name)
    except KeyboardInterrupt:
        from toolconfig.logs import setup_logging

        # the commands' own format: a line at a terminal, JSON otherwise (cron's log)
        setup_logging("m2_code_store").error("%s: interrupted while starting, before it did anything", command)
        raise SystemExit(130) from None


def main() -> int:
    """``m2-code-store``: for ``serve``, SIGHUP (a reload) is ignored from the first instant, before
    the command's imports; serve then passes it on to the server once that can take it."""
    if sys.argv[1:2] == ["serve"]:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    command = _imported("m2_code_store.cli", "m2-code-store").main
    _imported("m2_code_store.write_csv_to_redis", "m2-code-store")  # cli.main's first import: the loader's modules
    status = command()
    if sys.argv[1:2] == ["load"]:  # as write_csv_to_redis does: no interpreter teardown after a load
        from m2_code_store.write_csv_to_redis import exit_now

        exit_now(status)
    return status


def write_csv_to_redis() -> None:
    """``write_csv_to_redis``: the loader's :func:`~m2_code_store.write_csv_to_redis.console`."""
    _imported("m2_code_store.write_csv_to_redis", "write_csv_to_redis").console()


if __name__ == "__main__":
    sys.exit(main())
