"""`m2-code-store serve` as operators run it: real processes, real signals, a real Redis.

Ctrl-C at a terminal signals the whole foreground process group (here: typed at a pseudo-terminal
that serve has as its controlling terminal); systemd (KillMode=mixed), cron and kill signal the main PID
only. Either way the server and every worker are gone within a couple of seconds. Stop times are
printed (run with -s to see them), and only checked against a generous bound.
"""

from __future__ import annotations

import http.client
import json
import os
import pty
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from logtext import messages

from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from m2_code_store.serving import (
    GUNICORN_CONFIG,
    STOP_DEADLINE,
    metrics_dir,
    port_claimed,
    server_command,
)
from simulators.redis_server import free_port
from toolconfig import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HEADER = "Item barcode,Accession date,Customer code,Delete date\n"
STOP_BOUND = 10.0  # generous: the aim is 2 s, but the machine is shared
#: 1000 barcodes as the catalog sends them: a query string of about 15 KB.
THOUSAND = [f"33433{n:09d}" for n in range(1000)]
LOOKUP = "/api/v0.1/m2-customer-codes?barcodes=" + ",".join(THOUSAND)


def fill(redis_url: str, tmp_path: Path) -> None:
    """The first of the thousand barcodes is NA; the others are unknown."""
    path = tmp_path / "items.csv"
    path.write_text(HEADER + f"{THOUSAND[0]},2024-01-01,NA,\n")
    client = redis.Redis.from_url(redis_url)
    load(client, read_export(path))
    client.close()


def process_tree(pid: int) -> set[int]:
    """*pid* and every process descended from it (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(children.get(current, []))
    return tree


def alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie waiting for a parent that never reaps it does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


#: Runs serve with the terminal on its stdin as its controlling terminal (it leads a new session):
#: Ctrl-C typed there is SIGINT to serve's whole process group, as in a person's shell.
AT_A_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                 "os.execv(sys.executable, [sys.executable, '-m', 'm2_code_store', 'serve', *sys.argv[1:]])")


@dataclass
class Serve:
    """A running `m2-code-store serve`, in a session of its own (at a terminal of its own, if asked)."""

    process: subprocess.Popen
    port: int
    out: Path  # with a terminal: everything the terminal showed
    err: Path
    terminal: int | None = None  # the terminal's controlling side
    known: set[int] = field(default_factory=set)  # every process of it seen so far
    reader: threading.Thread | None = None  # copies what the terminal shows into `out`

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited {self.process.returncode}: {self.stderr()}"
            try:
                if get(self.port, "/api/v0.1/openapi.json")[0] == 200:
                    self.known |= process_tree(self.process.pid)
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not answer within {seconds} s: {self.stderr()}")

    def stop(self, how: str) -> float:
        """Type Ctrl-C at serve's terminal, or send SIGTERM to serve's PID alone as systemd
        (KillMode=mixed), cron and kill do; return the seconds until serve exited."""
        self.known |= process_tree(self.process.pid)
        started = time.monotonic()
        if how == "ctrl-c":
            assert self.terminal is not None
            os.write(self.terminal, b"\x03")
        else:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=STOP_BOUND + 20)
        seconds = time.monotonic() - started
        if self.reader is not None:  # what serve wrote last may not be copied yet: it ends with the terminal
            self.reader.join(timeout=5)
        return seconds

    def stderr(self) -> str:
        return self.err.read_text()

    def stdout(self) -> str:
        return self.out.read_text()


def copy_terminal(terminal: int, path: Path) -> None:
    """What the terminal shows, into *path*, until no process holds it any more."""
    with path.open("ab") as shown:
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: every process at the terminal has closed it
                return
            if not chunk:
                return
            shown.write(chunk)
            shown.flush()


@pytest.fixture
def serve(redis_url: str, tmp_path: Path) -> Iterator:
    """Start `m2-code-store serve` on a free port; whatever is still running at the end is killed."""
    started: list[Serve] = []
    readers: list[tuple[threading.Thread, int]] = []

    def start(*options: str, env: dict[str, str] | None = None, workers: int = 2, terminal: bool = False,
              port: int | None = None) -> Serve:
        port = port or free_port()
        out, err = tmp_path / f"serve-{len(started)}-{port}.out", tmp_path / f"serve-{len(started)}-{port}.err"
        args = ["--port", str(port), "--workers", str(workers), *options]
        environ = {**os.environ, "REDIS_URL": redis_url, "TMPDIR": str(tmp_path), **(env or {})}  # its metrics dir too
        if terminal:
            controller, device = pty.openpty()
            out.touch()
            process = subprocess.Popen([sys.executable, "-c", AT_A_TERMINAL, *args], cwd=tmp_path, env=environ,
                                       stdin=device, stdout=device, stderr=device, start_new_session=True)
            os.close(device)
            reader = threading.Thread(target=copy_terminal, args=(controller, out), daemon=True)
            reader.start()
            readers.append((reader, controller))
            started.append(Serve(process, port, out, out, terminal=controller, reader=reader))
            return started[-1]
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "m2_code_store", "serve", *args], cwd=tmp_path, env=environ,
                                       stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True)
        started.append(Serve(process, port, out, err))
        return started[-1]

    yield start
    for served in started:
        served.known |= process_tree(served.process.pid)
        for pid in served.known:
            try:  # only a process of this serve: its port is on its command line (pids are reused)
                if str(served.port) in Path(f"/proc/{pid}/cmdline").read_text():
                    group = os.getpgid(pid)
                    os.kill(pid, signal.SIGKILL)
                    if group != os.getpgrp():  # the server's group too: a worker it forked a moment ago
                        os.killpg(group, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        served.process.wait()
    for reader, controller in readers:
        reader.join(timeout=10)
        os.close(controller)


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"], ids=["ctrl-c-at-a-terminal", "sigterm-to-the-main-pid"])
def test_a_stop_signal_stops_the_server_and_every_worker_within_seconds(serve, server, how):
    """Ctrl-C at a terminal (SIGINT to the whole foreground group) or SIGTERM to serve alone (systemd,
    cron) ends serve with exit 0, and no worker is left behind, even with a keep-alive connection open."""
    served = serve("--server", server, terminal=how == "ctrl-c")
    served.wait_ready()
    time.sleep(1.0)  # every worker has started (a stop during start-up has its own test)
    client = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    client.request("GET", "/api/v0.1/openapi.json")
    assert client.getresponse().read()  # the connection stays open, as a proxy's would
    processes = process_tree(served.process.pid)
    assert len(processes) >= 4  # serve, the server, its two workers

    seconds = served.stop(how)
    client.close()
    print(f"\n{server}, {how}: serve exited {served.process.returncode} after {seconds:.2f} s")
    assert served.process.returncode == 0, served.stderr()
    assert seconds < STOP_BOUND
    assert wait_gone(processes, 5) == set()
    assert not listening(served.port)
    said = messages(served.stderr())
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    terminal_echo = r"(\^C)?"  # the terminal shows the Ctrl-C typed
    stopping = [i for i, line in enumerate(said)
                if re.fullmatch(rf"{terminal_echo}(\d\d:\d\d:\d\d )?stopping the server \({name}\)", line.rstrip("\r"))]
    assert len(stopping) == 1, said
    assert re.fullmatch(r"(\d\d:\d\d:\d\d )?stopped in \d+\.\d\d s", said[-1].rstrip("\r")), said
    # between them only granian's own word that it killed a worker that was slow to stop (CI saw
    # one after a Ctrl-C, which reaches the workers too)
    assert all("Killing worker" in line for line in said[stopping[0] + 1:-1]), said
    assert "Traceback" not in served.stderr() + served.stdout()


def test_ctrl_c_while_the_workers_start_is_obeyed_too(serve):
    """The case granian itself never ended (a worker told to stop as it starts does not stop):
    its workers are killed after a second, and serve exits 0 within the bound."""
    served = serve(terminal=True)
    deadline = time.monotonic() + 60
    while len(process_tree(served.process.pid)) < 3:  # serve and granian; the workers are starting
        assert time.monotonic() < deadline and served.process.poll() is None, served.stderr()
        time.sleep(0.01)
    processes = process_tree(served.process.pid)
    seconds = served.stop("ctrl-c")
    print(f"\ngranian, ctrl-c during start-up: serve exited {served.process.returncode} after {seconds:.2f} s")
    assert served.process.returncode == 0, served.stderr()
    assert seconds < STOP_BOUND
    assert wait_gone(processes | process_tree(served.process.pid), 5) == set()
    assert not listening(served.port)


def test_serve_killed_outright_takes_its_server_with_it(serve):
    """kill -9 of serve (or the OOM killer) leaves no orphaned server holding the port."""
    served = serve()
    served.wait_ready()
    processes = process_tree(served.process.pid)
    served.process.kill()
    served.process.wait()
    assert wait_gone(processes, STOP_BOUND) == set()
    assert not listening(served.port)


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_a_port_in_use_is_one_line_and_exit_2(server, redis_url, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "m2_code_store", "serve", "--port", str(port), "--server", server],
                              cwd=tmp_path, env={**os.environ, "REDIS_URL": redis_url}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert messages(done.stderr) == [
        f"error: 127.0.0.1:{port} is already in use: another server (perhaps an m2-code-store serve still running) "
        f"listens there; stop it, or choose another port with --port"]
    assert done.stdout == ""


def test_a_second_serve_on_the_port_of_a_running_one_is_refused(serve):
    """granian binds with SO_REUSEPORT, so without the check a second granian would share the
    port with the first (each answering half the requests, perhaps from another release)."""
    first = serve(workers=1)
    first.wait_ready()
    second = subprocess.run([sys.executable, "-m", "m2_code_store", "serve", "--port", str(first.port)],
                            env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert messages(second.stderr) == [
        f"error: 127.0.0.1:{first.port} is already in use: another server (perhaps an m2-code-store serve still "
        f"running) listens there; stop it, or choose another port with --port"]
    assert get(first.port, "/api/v0.1/openapi.json")[0] == 200


def test_two_serves_started_at_once_on_one_port_leave_one_server(serve):
    """Started together, both find the port free (no server listens yet), and granian, which binds
    with SO_REUSEPORT, would let both listen: the first to claim the port runs, the other is refused."""
    first = serve(workers=1)
    second = serve(workers=1, port=first.port)
    deadline = time.monotonic() + 60
    while first.process.poll() is None and second.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    refused, running = (first, second) if first.process.poll() is not None else (second, first)
    assert refused.process.poll() == 2, "neither serve was refused: two servers share the port"
    address = f"127.0.0.1:{first.port}"
    assert messages(refused.stderr()) in (
        [f"error: {address}: another m2-code-store serve of port {first.port} is starting or running on this machine "
         f"(ss -xlp | grep -w m2-code-store-serve:{first.port} shows it); stop it, or choose another port with --port"],
        [f"error: {address} is already in use: another server (perhaps an m2-code-store serve still running) "
         "listens there; stop it, or choose another port with --port"],  # it came after the first one listened
    )
    running.wait_ready()
    assert get(first.port, "/api/v0.1/openapi.json")[0] == 200


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the claim is a Linux abstract-namespace socket")
def test_the_port_is_claimed_while_serve_runs_and_free_again_after():
    port = free_port()
    with port_claimed("127.0.0.1", port):
        with pytest.raises(ConfigError, match=f"another m2-code-store serve of port {port} is starting or running"):
            with port_claimed("0.0.0.0", port):
                pass
        with port_claimed("127.0.0.1", free_port()):  # another port: its own claim
            pass
    with port_claimed("127.0.0.1", port):
        pass


def test_where_unix_sockets_are_forbidden_serve_runs_unclaimed_and_says_so(monkeypatch, caplog):
    def forbidden(*args: object) -> socket.socket:
        raise OSError(97, "Address family not supported by protocol")

    port = free_port()
    monkeypatch.setattr("m2_code_store.serving.socket.socket", forbidden)  # the socket module's own: for this test only
    with port_claimed("127.0.0.1", port):
        pass
    assert [record.getMessage() for record in caplog.records] == [
        f"cannot claim port {port} for this server (Address family not supported by protocol): a second serve of the "
        "port started at the same moment would not be refused"]


def test_debug_runs_flasks_development_server_and_says_the_debuggers_pin(serve):
    """Without the reloader, whose second run of the command would find the port taken by the first;
    the PIN it prints opens the debugger's console."""
    server = serve("--debug")
    server.wait_ready()
    shown = server.stdout() + server.stderr()
    assert "Debug mode: on" in shown
    assert "the debugger is on: its console runs any Python code for whoever has its PIN" in server.stderr()
    pin = re.search(r" \* Debugger PIN: (\d{3}-\d{3}-\d{3})", server.stdout())
    assert pin, shown
    console = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/console", timeout=10).read().decode()
    secret = re.search(r'SECRET = "([^"]+)"', console)
    assert secret, console[:500]
    query = urllib.parse.urlencode({"__debugger__": "yes", "cmd": "pinauth", "pin": pin[1], "s": secret[1]})
    answer = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.port}/console?{query}", timeout=10).read())
    assert answer["auth"] is True


@pytest.mark.parametrize(("name", "value", "message"), [
    ("M2_MAX_BARCODES", "lots", "M2_MAX_BARCODES must be a positive whole number (got 'lots')"),
    ("M2_MAX_BARCODES", "0", "M2_MAX_BARCODES must be a positive whole number (got '0')"),
    ("M2_RESPONSE_BODY", "outer", "M2_RESPONSE_BODY must be envelope (the default) or inner, not 'outer'"),
    ("M2_HEALTH_MAX_AGE", "a day", "M2_HEALTH_MAX_AGE must be a duration such as 36h, 90m, 2d or a number of seconds "
                                   "(got 'a day'); leave it unset for no limit"),
    ("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/m2-metrics",
     "PROMETHEUS_MULTIPROC_DIR='/nonexistent/m2-metrics' is not a writable directory: create it (empty) before the "
     "server starts, or unset it to count in each process alone"),
    ("M2_REDIS_CLUSTER", "yes", "M2_REDIS_CLUSTER=yes, but {redis_url} is not a Redis Cluster node (cluster support "
                                "disabled): set M2_REDIS_CLUSTER=auto or no"),
])
def test_a_bad_setting_is_one_line_and_exit_2_before_any_worker_starts(name, value, message, redis_url, tmp_path):
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "m2_code_store", "serve", "--port", str(port), "--workers", "4"],
                          cwd=tmp_path, env={**os.environ, "REDIS_URL": redis_url, name: value},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert messages(done.stderr) == [f"error: {message.format(redis_url=redis_url)}"]
    assert not listening(port)


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
@pytest.mark.parametrize("access_log", [False, True], ids=["default", "--access-log"])
def test_access_log_is_off_unless_asked_for_and_1000_barcodes_are_answered(serve, server, access_log, redis_url, tmp_path):
    """--access-log logs each request on stdout, for either server, in the same form (without the
    query string); by default nothing is logged per request. A 1000-barcode request (about 15 KB
    of query string) is answered by both."""
    fill(redis_url, tmp_path)
    served = serve("--server", server, *(["--access-log"] if access_log else []), workers=1)
    served.wait_ready()
    status, body = get(served.port, LOOKUP)
    assert status == 200
    data = json.loads(body)["body"]["data"]
    assert len(data) == 1000 and data[0] == {"barcode": THOUSAND[0], "m2CustomerCode": "NA"}
    deadline = time.monotonic() + 10  # granian writes the line after the answer has gone out
    while access_log and "GET /api/v0.1/m2-customer-codes" not in served.stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    served.stop("sigterm")
    logged = [line for line in served.stdout().splitlines() if "GET /api/v0.1/m2-customer-codes" in line]
    assert len(logged) == (1 if access_log else 0), served.stdout()
    if access_log:  # the path, not its 15 KB of barcodes
        assert re.search(r'127\.0\.0\.1 - "GET /api/v0\.1/m2-customer-codes HTTP/1\.1" 200 \d', logged[0]), logged[0]
    assert "m2-customer-codes" not in served.stderr()


@pytest.mark.parametrize("operator_set", [False, True], ids=["made-by-serve", "set-by-the-operator"])
def test_the_workers_get_a_prometheus_multiprocess_directory(serve, operator_set, tmp_path):
    """serve makes a fresh private directory for prometheus_client's multiprocess files, names it
    to the workers in PROMETHEUS_MULTIPROC_DIR and removes it when it exits; an operator's own
    directory is used as it is and kept."""
    own = tmp_path / "metrics"
    own.mkdir()
    served = serve(env={"PROMETHEUS_MULTIPROC_DIR": str(own)} if operator_set else {"TMPDIR": str(tmp_path)})
    served.wait_ready()
    seen = set()
    for pid in process_tree(served.process.pid) - {served.process.pid}:  # the server and its workers
        environ = dict(item.partition("=")[::2] for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if item)
        seen.add(environ.get("PROMETHEUS_MULTIPROC_DIR"))
    (directory,) = seen
    assert directory is not None and Path(directory).is_dir()
    if operator_set:
        assert directory == str(own)
    else:
        assert Path(directory).parent == tmp_path and Path(directory).name.startswith("m2-code-store-metrics-")
        assert stat.S_IMODE(Path(directory).stat().st_mode) == 0o700
    assert not list(Path(directory).glob(f"*_{served.process.pid}.db"))  # serve itself counts nothing
    served.stop("sigterm")
    assert served.process.returncode == 0
    assert Path(directory).is_dir() == operator_set


# --- the supervision itself, with stand-in servers that misbehave on purpose -------------------------

STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, lambda *_: print("reloading", flush=True))
worker = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print("worker", worker.pid, flush=True)
time.sleep(600)
"""

SUPERVISE = ("import os, sys; from m2_code_store.serving import supervise; from toolconfig.logs import setup_logging; "
             "setup_logging('m2_code_store'); sys.exit(supervise(sys.argv[1:], os.environ))")


def test_a_server_that_ignores_sigterm_is_killed_with_its_workers_at_the_deadline(tmp_path):
    """SIGHUP is passed on (a reload); SIGTERM too, and STOP_DEADLINE seconds later the server
    and its workers, which ignore it, are killed; serve exits 0 and says so."""
    out = tmp_path / "out"
    with out.open("w") as stdout:
        process = subprocess.Popen([sys.executable, "-c", SUPERVISE, sys.executable, "-c", STUBBORN], cwd=ROOT,
                                   stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "worker" not in out.read_text():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
        worker = int(out.read_text().split()[1])
        processes = process_tree(process.pid)
        assert worker in processes and len(processes) == 3

        process.send_signal(signal.SIGHUP)
        while "reloading" not in out.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert process.poll() is None

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=STOP_BOUND + 20)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            for pid in process_tree(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.wait()
    print(f"\na server ignoring SIGTERM: killed, serve exited after {seconds:.2f} s")
    assert process.returncode == 0
    assert STOP_DEADLINE <= seconds < STOP_BOUND
    assert wait_gone(processes, 5) == set()
    assert messages(err)[-2] == f"warning: the server had not stopped {STOP_DEADLINE:g} s after it was told to: killed it and its workers"


@pytest.mark.parametrize(("code", "status"), [
    ("sys.exit(3)", 3),
    ("os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
])
def test_a_server_that_ends_by_itself_gives_serve_its_exit_status(code, status):
    done = subprocess.run([sys.executable, "-c", SUPERVISE, sys.executable, "-c", f"import os, signal, sys; {code}"],
                          cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == status, done.stderr
    assert messages(done.stderr) == [f"error: the server exited by itself, status {status}; its messages above say why"]


def test_no_place_for_the_metrics_directory_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"^cannot make a directory for the workers' metrics \(.*missing.*\): "
                                          r"set TMPDIR, or PROMETHEUS_MULTIPROC_DIR, to a writable directory$"):
        with metrics_dir({}):
            pass


# --- gunicorn run by hand ---------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "status"), [
    (["--config", GUNICORN_CONFIG], 200),
    ([], 414),  # gunicorn's own limit of 4094 bytes for the request line
], ids=["with-the-shipped-config", "without"])
def test_gunicorn_run_with_the_shipped_config_answers_1000_barcodes(config, status, redis_url, tmp_path):
    """The README's `gunicorn -c python:m2_code_store.gunicorn_conf 'm2_code_store.api:create_app()'`."""
    fill(redis_url, tmp_path)
    port = free_port()
    err = tmp_path / "gunicorn.err"
    with err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *config, "m2_code_store.api:create_app()", "--bind", f"127.0.0.1:{port}",
             "--workers", "1"],
            cwd=tmp_path, env={**os.environ, "REDIS_URL": redis_url}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            assert process.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        answered, body = get(port, LOOKUP)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert answered == status
    if status == 200:
        assert len(json.loads(body)["body"]["data"]) == 1000


def test_serve_runs_gunicorn_with_the_shipped_config():
    argv = server_command("gunicorn", "0.0.0.0", 8000, 2, 2)
    assert argv[argv.index("--config") + 1] == GUNICORN_CONFIG == "python:m2_code_store.gunicorn_conf"


def test_a_store_that_does_not_answer_yet_is_a_warning_and_the_server_starts(serve, tmp_path):
    """The API starts while Redis is down (it answers 503 until Redis is back): serve's check of
    the store says so in one line and goes on."""
    served = serve(env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, workers=1)
    served.wait_ready()
    assert get(served.port, "/health")[0] == 503
    served.stop("sigterm")
    assert "the store does not answer yet" in served.stderr()


def test_a_worker_that_dies_is_replaced_and_the_server_keeps_answering(serve, redis_url, tmp_path):
    """A granian worker killed outright (the OOM killer) is respawned: the API stays up (granian's
    default would exit, and take the whole service down)."""
    served = serve(workers=2)
    served.wait_ready()
    granian = [pid for pid in process_tree(served.process.pid) if pid != served.process.pid
               and int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == served.process.pid]
    (server,) = granian
    worker = min(process_tree(server) - {server})
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(process_tree(server) - {server}) < 2 or worker in process_tree(server):
        assert served.process.poll() is None, f"serve exited {served.process.returncode}: {served.stderr()}"
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.2)
    served.wait_ready(30)  # a connection the dead worker had taken is lost; the others are answered
    for _ in range(10):
        assert get(served.port, "/api/v0.1/openapi.json")[0] == 200
    assert served.process.poll() is None
    served.stop("sigterm")
    assert served.process.returncode == 0


@pytest.mark.parametrize("after", [0.3, 0.8])
def test_a_reload_asked_while_the_server_starts_does_not_stop_it(serve, after):
    """systemctl restart && systemctl reload: a SIGHUP in serve's first second (before the server
    has its own handler) must not kill serve or the server."""
    served = serve(workers=1)
    time.sleep(after)
    served.process.send_signal(signal.SIGHUP)
    served.wait_ready()
    time.sleep(1.0)
    assert served.process.poll() is None
    assert get(served.port, "/api/v0.1/openapi.json")[0] == 200
    served.stop("sigterm")
    assert served.process.returncode == 0


def test_plain_gunicorn_with_the_shipped_config_adds_up_every_workers_metrics(redis_url, tmp_path):
    """The shipped config gives gunicorn's workers a multiprocess directory (made in TMPDIR,
    removed at exit), so /metrics from any worker shows every worker's counts; no control socket."""
    from prometheus_client.parser import text_string_to_metric_families

    fill(redis_url, tmp_path)
    port = free_port()
    err = tmp_path / "gunicorn.err"
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    with err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, "m2_code_store.api:create_app()",
             "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            cwd=tmp_path, env={**env, "REDIS_URL": redis_url, "TMPDIR": str(tmp_path)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            assert process.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        (made,) = tmp_path.glob("m2-code-store-metrics-*")
        for _ in range(40):
            assert get(port, "/api/v0.1/m2-customer-codes?barcodes=1,2")[0] == 200
        for _ in range(6):
            text = get(port, "/metrics")[1].decode()
            counted = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(text) for s in family.samples}
            assert counted[("m2_api_requests_total", (("path", "/api/v0.1/m2-customer-codes"), ("status", "200")))] == 40
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert not made.exists()
    assert "Control server" not in err.read_text()
