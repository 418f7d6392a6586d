"""``python -m libcal_passagepoint`` and the ``libcal-passagepoint`` script: see cli.py.

The command module is imported inside ``main`` so that a Ctrl-C while it loads (aiohttp takes a
few tenths of a second) also ends with one line instead of a traceback.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    """Run the command line; a Ctrl-C that comes before a pass could start, or a closed stdout, ends quietly."""
    try:
        from .cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        # A pass handles SIGINT itself (it finishes the bookings in flight, records them, exits 0):
        # this is one that came before, while loading, locking or opening the cache.
        print("libcal_passagepoint: interrupted: nothing was done", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `status | head -2`: the reader left; say nothing more to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
