"""Read what a command logged on stderr without a terminal (one JSON object per line), as text.

``messages(stderr)`` gives one string per line: ``"error: …"``, ``"warning: …"``, or the bare
message for information, so tests assert on the words a person reads on a terminal.
"""

from __future__ import annotations

import json


def messages(stderr: str) -> list[str]:
    """Each log line of *stderr* as ``level: message`` (information: the message alone)."""
    out = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            out.append(line)  # not a log line (a traceback, argparse's usage): kept as it is
            continue
        level = entry.get("level", "info")
        out.append(entry["message"] if level == "info" else f"{level}: {entry['message']}")
    return out
