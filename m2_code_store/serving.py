"""Running the API under a production WSGI server (granian or gunicorn), as ``m2-code-store serve`` does.

``serve`` stays the parent of the server (it does not exec it), so that, whichever server runs:

* the address is checked before the server starts: a port already taken is one message, not
  granian's Python and Rust backtraces or gunicorn's five retries (and granian, which binds with
  SO_REUSEPORT, would otherwise share the port with another granian and split its traffic), and
  the port stays claimed while ``serve`` runs, so two started at once do not both pass the check;
* SIGINT (Ctrl-C at a terminal, which signals the whole foreground process group) and SIGTERM
  (systemd's KillMode=mixed, cron, kill: the main PID only) stop the server within
  ``STOP_DEADLINE`` seconds: the server runs in its own process group, gets SIGTERM and
  ``SERVER_GRACE`` seconds to finish its requests, then the whole group is killed (granian
  workers can hang in their shutdown: emmett-framework/granian#875); SIGHUP is passed on
  (both servers then respawn their workers: ``systemctl reload``);
* prometheus_client's multiprocess mode gets a fresh private directory for the server's life
  (``PROMETHEUS_MULTIPROC_DIR``, unless the operator set one), removed when the server stops.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from toolconfig import ConfigError

log = logging.getLogger(__name__)

APP_FACTORY = "m2_code_store.api:create_app"
GUNICORN_CONFIG = "python:m2_code_store.gunicorn_conf"
SERVERS = ("granian", "gunicorn")
#: Seconds the server has to finish its requests once told to stop (granian's
#: --workers-kill-timeout, whose minimum is 1; gunicorn's graceful_timeout in gunicorn_conf).
SERVER_GRACE = 1
#: Seconds after a stop signal at which whatever is left of the server is killed.
STOP_DEADLINE = 1.5
METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"


def server_command(server: str, host: str, port: int, workers: int, threads: int, *, access_log: bool = False) -> list[str]:
    """The argv that runs the API under *server* (``granian`` or ``gunicorn``)."""
    if server == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "wsgi", "--factory", APP_FACTORY,
            "--host", host, "--port", str(port), "--workers", str(workers),
            "--blocking-threads", str(threads), "--no-ws", "--log-level", "warning",
            "--workers-kill-timeout", str(SERVER_GRACE),
            "--respawn-failed-workers",  # a worker that dies (the OOM killer) is replaced, as gunicorn does
            "--access-log" if access_log else "--no-access-log",
        ]
    if server == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "--config", GUNICORN_CONFIG, f"{APP_FACTORY}()",
            "--bind", _bind_address(host, port), "--workers", str(workers), "--threads", str(threads),
            "--log-level", "warning", *(["--access-logfile", "-"] if access_log else []),
        ]
    raise ValueError(f"unknown server {server!r} (expected one of {', '.join(SERVERS)})")


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_address(host: str, port: int) -> None:
    """Raise a ConfigError saying what to do if nothing can listen on *host*:*port* now.

    The socket is bound as the servers bind theirs (SO_REUSEADDR, so connections of a server
    stopped a moment ago do not count) but without SO_REUSEPORT, so a listening granian, which
    would accept a second granian beside it, is found too.
    """
    address = _bind_address(host, port)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {address}: {host!r} is not a host name or address of this machine "
                          f"({exc.strerror}); use --host 127.0.0.1, 0.0.0.0 or an address of this machine") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise ConfigError(_bind_problem(address, port, exc)) from None


@contextmanager
def port_claimed(host: str, port: int) -> Iterator[None]:
    """This ``serve``'s claim on *port* while it runs, so that a second ``serve`` of the port started
    before the first one's server listens is refused: check_address would pass for both, and
    granian, which binds with SO_REUSEPORT, would let both listen and split the traffic.

    The claim is a Unix socket named after the port in Linux's abstract namespace: it is gone with
    the process however the process ends (no file is left behind) and is the same for every user and
    every TMPDIR. It is per port, whatever the address: one ``serve`` of a port on a machine. Where
    it cannot be made (not Linux, or Unix sockets forbidden, as systemd's RestrictAddressFamilies
    can) there is no claim and check_address alone applies.
    """
    name = f"m2-code-store-serve:{port}"
    if not sys.platform.startswith("linux"):
        yield
        return
    try:
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not inherited by the server
    except OSError as exc:
        _unclaimed(port, exc)
        yield
        return
    with claim:
        try:
            claim.bind(f"\0{name}")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{_bind_address(host, port)}: another m2-code-store serve of port {port} is "
                                  f"starting or running on this machine (ss -xlp | grep -w {name} shows it); stop it, "
                                  "or choose another port with --port") from None
            _unclaimed(port, exc)
        yield


def _unclaimed(port: int, exc: OSError) -> None:
    log.warning("cannot claim port %d for this server (%s): a second serve of the port started at the same moment "
                "would not be refused", port, exc.strerror or exc)


def _bind_problem(address: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"{address} is already in use: another server (perhaps an m2-code-store serve still running) "
                f"listens there; stop it, or choose another port with --port")
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {address}: permission denied (ports below 1024 need root or "
                f"CAP_NET_BIND_SERVICE); use a port of 1024 or more with --port, behind a proxy on port {port}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {address}: not an address of this machine; use --host 127.0.0.1, 0.0.0.0 or one of its addresses"
    return f"cannot listen on {address}: {exc.strerror or exc}"


@contextmanager
def metrics_dir(environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The environment for the server: *environ* with ``PROMETHEUS_MULTIPROC_DIR`` set to a new
    private directory, removed on exit (unless *environ* names one already: that one is kept)."""
    if environ.get(METRICS_DIR_VAR, "").strip() or environ.get(METRICS_DIR_VAR.lower(), "").strip():
        yield dict(environ)  # the operator's (prometheus_client also reads the old lower-case name)
        return
    try:
        path = tempfile.mkdtemp(prefix="m2-code-store-metrics-")  # mode 0700, under $TMPDIR
    except OSError as exc:
        raise ConfigError(f"cannot make a directory for the workers' metrics ({exc}): set TMPDIR, or "
                          f"{METRICS_DIR_VAR}, to a writable directory") from None
    try:
        yield {**environ, METRICS_DIR_VAR: path}
    finally:
        shutil.rmtree(path, ignore_errors=True)


def supervise(argv: list[str], env: Mapping[str, str], *, deadline: float = STOP_DEADLINE) -> int:
    """Run the server *argv* as a child and return the exit status of ``serve``.

    The child leads its own process group. SIGINT or SIGTERM sends it SIGTERM; *deadline* seconds
    later (or at a second SIGINT/SIGTERM) its whole group is killed. SIGHUP is passed on. A stop
    asked for this way is exit 0; a server that ends by itself gives its own status (128 + N for
    a death by signal N).
    """
    wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
    # The handlers do nothing: each signal's number is written to the wakeup pipe, which the
    # loop waits on, so a signal or the child's exit is seen at once and an idle server costs nothing.
    # The wakeup fd first: a signal that arrives once its handler is installed is then never lost.
    previous_wakeup = signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, lambda *_: None) for signum in handled}
    try:
        child = subprocess.Popen(argv, env=dict(env), process_group=0, preexec_fn=_child_setup(os.getpid()))
        return _watch(child, wakeup_read, deadline)
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(wakeup_read)
        os.close(wakeup_write)


def _watch(child: subprocess.Popen, wakeup: int, deadline: float) -> int:
    stop_asked: float | None = None
    killed = False
    while not _exited(child.pid):
        timeout = 1.0 if stop_asked is None or killed else max(0.0, stop_asked + deadline - time.monotonic())
        select.select([wakeup], [], [], timeout)
        try:
            received = os.read(wakeup, 512)
        except BlockingIOError:
            received = b""
        for signum in received:
            if signum == signal.SIGHUP:
                _send(child.pid, signal.SIGHUP)
            elif signum not in (signal.SIGINT, signal.SIGTERM):
                continue  # SIGCHLD: the loop's test sees whether the server exited
            elif stop_asked is None:
                stop_asked = time.monotonic()
                log.info("stopping the server (%s)", signal.Signals(signum).name)
                _send(child.pid, signal.SIGTERM)
            elif not killed:  # a second Ctrl-C: no more waiting
                _kill_group(child.pid)
                killed = True
        if stop_asked is not None and not killed and time.monotonic() - stop_asked >= deadline:
            log.warning("the server had not stopped %g s after it was told to: killed it and its workers", deadline)
            _kill_group(child.pid)
            killed = True
    _kill_group(child.pid)  # workers the server left behind (the group lives while its exited leader is unreaped)
    status = child.wait()
    if stop_asked is not None:
        log.info("stopped in %.2f s", time.monotonic() - stop_asked)
        return 0
    status = 128 - status if status < 0 else status  # -N: killed by signal N
    log.error("the server exited by itself, status %d; its messages above say why", status)
    return status


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (so its process group id stays its own)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _child_setup(parent: int) -> Callable[[], None]:
    """A preexec_fn for the server. It starts with SIGHUP ignored: a reload passed on before the
    server has installed its own handler (in its first second) would otherwise kill it, and both
    servers install theirs. On Linux the kernel sends it SIGTERM if ``serve`` dies without
    stopping it (kill -9, the OOM killer), so no orphaned server keeps the port."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    pr_set_pdeathsig = 1

    def setup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if prctl is not None:
            prctl(pr_set_pdeathsig, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return setup
