"""gunicorn's settings for the lookup API: ``gunicorn -c python:m2_code_store.gunicorn_conf 'm2_code_store.api:create_app()'``.

``m2-code-store serve --server gunicorn`` runs gunicorn with this file too. Options on gunicorn's
command line, such as ``--bind`` and ``--workers``, override what is set here. gunicorn takes
every module-level name that is one of its settings (``bind``, ``timeout``, ``user``, …): no
helper here may have such a name.
"""

from __future__ import annotations

import os

# 1000 barcodes make a request line of about 15 KB (49 KB at 48 characters each); gunicorn's
# default limit is 4094 bytes (a 414 answer) and any value it accepts is capped at 8190, except
# 0: no limit of gunicorn's own (it still stops at 1 MiB). The app refuses query strings longer
# than api.MAX_QUERY_BYTES with a 400 that says to split the request.
limit_request_line = 0

# The same defaults as `m2-code-store serve`: one worker per core, two threads each (gthread).
workers = os.cpu_count() or 1
threads = 2

# With --access-logfile (serve --access-log): granian's form, the path without its query string
# (1000 barcodes would make every line 15 KB): time, client, "method path protocol", status, ms.
access_log_format = '%(t)s %(h)s - "%(m)s %(U)s %(H)s" %(s)s %(M)s'

# Seconds a stopping or reloading worker has to finish its requests before it is killed. A lookup
# takes milliseconds, and the store's timeouts end one that waits on Redis within a second, so
# Ctrl-C or SIGTERM stops the server in about a second rather than gunicorn's default 30 s.
graceful_timeout = 1

# gunicorn 23+ opens a control socket, by default ~/.gunicorn/gunicorn.ctl: one path for every
# gunicorn of the user (a second one takes it over and deletes it on exit), and an error line at
# each start where HOME is not writable (the systemd unit's ProtectHome=yes). The API needs none.
control_socket_disable = True


# /metrics adds up every worker's counts through prometheus_client's multiprocess files. Run as
# plain `gunicorn -c python:m2_code_store.gunicorn_conf …`, the master makes the directory before
# the workers start (and removes it when it exits) unless PROMETHEUS_MULTIPROC_DIR is set
# (`m2-code-store serve` sets it); a worker that exits is marked dead, as prometheus_client asks.
_MADE_METRICS_DIR: list[str] = []


def on_starting(server: object) -> None:
    if not (os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")):
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="m2-code-store-metrics-")
        _MADE_METRICS_DIR.append(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    import shutil

    for directory in _MADE_METRICS_DIR:
        shutil.rmtree(directory, ignore_errors=True)
