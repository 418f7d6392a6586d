"""``python -m m2_code_store`` is ``m2-code-store`` (the console script runs :func:`main` too)."""

import signal
import sys


def main() -> int:
    """``m2-code-store``: for ``serve``, SIGHUP (a reload) is ignored from the first instant, before
    the command's imports; serve then passes it on to the server once that can take it."""
    if sys.argv[1:2] == ["serve"]:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from m2_code_store.cli import main as command

    status = command()
    if sys.argv[1:2] == ["load"]:  # as write_csv_to_redis does: no interpreter teardown after a load
        from m2_code_store.write_csv_to_redis import exit_now

        exit_now(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
