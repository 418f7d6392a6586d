"""deploy/: the systemd units, the crontab, the environment files and the API's Dockerfile.

Each file is parsed and its commands checked against the console scripts pyproject.toml installs
and the tools' own argument parsers; then each command is run here as systemd, cron or the image
would run it (no terminal, only the environment the file gives it, install paths mapped to this
checkout's .venv and temporary directories) against a real Redis and the simulators. What needs
root, a running systemd or a Docker engine is not run: deploy/README.md says what that leaves.
"""

from __future__ import annotations

import ast
import asyncio
import http.client
import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from gunicorn.config import GracefulTimeout
from lcpp_sims import DAY, Sims

import libcal_passagepoint.cli as lcpp_cli
import m2_code_store.cli as m2_cli
from libcal_passagepoint.cache import Cache
from libcal_passagepoint.config import ENV_VARS as LCPP_SECRET_VARS
from libcal_passagepoint.config import ConfigError as LcppConfigError
from libcal_passagepoint.config import load_config
from m2_code_store.config import NO_STORE, resolve_target
from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from m2_code_store.store import CodeStore
from m2_code_store.write_csv_to_redis import parse_args as loader_parse_args
from simulators.redis_server import free_port
from toolconfig import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent  # the console scripts of this checkout's installation
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]

INSTALL = "/opt/library-systems-tools"
INSTALL_BIN = f"{INSTALL}/venv/bin/"
TOOL_SERVICES = ("m2-loader.service", "m2-api.service", "lcpp-sync.service", "lcpp-sync-every.service")
ENV_EXAMPLES = ("m2-code-store.env.example", "lcpp.env.example")
#: Where the deploy files put things on a server; each is mapped to a local directory to run them.
INSTALL_LOCATIONS = (
    INSTALL_BIN, INSTALL, "/etc/library-systems-tools", "/etc/lcpp", "/srv/m2/export", "/var/log/m2-code-store",
    "/var/log/lcpp",
)
#: System paths the files may name as they are: commands every Linux has, cron's PATH.
SYSTEM_PATHS = {"/bin/sh", "/bin/kill", "/usr/local/bin", "/usr/bin", "/bin"}
#: Variables read by the Python interpreter itself, not by the tools (set in the units and crontab).
PYTHON_VARS = {"PYTHONUNBUFFERED": "stdout reaches the journal or log line by line, in order"}

#: The exit statuses that should bring a person (a failed unit, a cron mail), per tool; "signal"
#: is a death by SIGTERM (a sync stopped before its pass began), which systemd counts as clean.
ALERTS = {
    "m2-loader.service": {0: False, 1: True, 2: True, 130: True, 143: False},
    "lcpp-sync.service": {0: False, 1: False, 2: True, 130: True, "signal": False},
}


# --- reading the files --------------------------------------------------------------------------

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """A systemd unit file as {section: [(key, value), ...]}, repeated keys kept in order."""
    sections: Unit = {}
    section = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}: bad section line {line!r}"
            section = line[1:-1]
            assert section not in sections, f"{path.name}: [{section}] twice"
            sections[section] = []
            continue
        assert section is not None and "=" in line, f"{path.name}: {line!r} is outside a section or not key=value"
        key, _, value = line.partition("=")
        sections[section].append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str | None:
    found = values(unit, section, key)
    return found[-1] if found else None


def load_unit(name: str) -> Unit:
    return parse_unit(DEPLOY / name)


def exec_argv(command: str) -> list[str]:
    """An ExecStart= of a tool unit as argv: no specifiers, no $ expansion, so shlex splits it as systemd does."""
    assert "%" not in command and "$" not in command, f"specifier or variable in {command!r}"
    return shlex.split(command.lstrip("-@:+!"))


def parse_timespan(text: str) -> float:
    """A systemd time span (``2min``, ``40s``, ``1h 30min``) in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), f"not a time span: {text!r}"
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them (comments, quotes)."""
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, val = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}: {line!r} is not KEY=value"
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        env[key] = val
    return env


def documented_vars(path: Path) -> set[str]:
    """Every variable an env file sets or shows commented out (``#NAME=``)."""
    return set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", path.read_text(encoding="utf-8"), re.M))


@dataclass
class CronJob:
    schedule: list[str]
    user: str
    command: str


def parse_crontab(path: Path) -> tuple[dict[str, str], list[CronJob]]:
    """A /etc/cron.d file: its variable lines and its jobs (five time fields, a user, a command)."""
    env: dict[str, str] = {}
    jobs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line.strip()):
            env[match.group(1)] = match.group(2)
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"not 'm h dom mon dow user command': {line!r}"
        jobs.append(CronJob(fields[:5], fields[5], fields[6]))
    return env, jobs


CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def valid_cron_field(field: str, low: int, high: int) -> bool:
    for item in field.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", item)
        if not match:
            return False
        numbers = [int(n) for n in match.group(2, 3) if n is not None]
        if any(not low <= n <= high for n in numbers) or (match.group(4) and int(match.group(4)) == 0):
            return False
    return True


def cron_tool_argv(job: CronJob) -> list[str]:
    """The tool's command line inside a cron job's shell command."""
    match = re.search(re.escape(INSTALL_BIN) + r"[^;]*", job.command)
    assert match, f"no {INSTALL_BIN} command in {job.command!r}"
    return shlex.split(match.group(0))


CRON_ENV, CRON_JOBS = parse_crontab(DEPLOY / "crontab.example")


def cron_job(script: str) -> CronJob:
    (job,) = [job for job in CRON_JOBS if cron_tool_argv(job)[0] == INSTALL_BIN + script]
    return job


@dataclass
class Instruction:
    name: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments dropped."""
    instructions = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if line.strip():
            name, _, args = line.strip().partition(" ")
            instructions.append(Instruction(name.upper(), args.strip()))
    return instructions


DOCKERFILE = parse_dockerfile(DEPLOY / "Dockerfile")


def final_stage() -> list[Instruction]:
    starts = [i for i, ins in enumerate(DOCKERFILE) if ins.name == "FROM"]
    return DOCKERFILE[starts[-1]:]


def docker_one(name: str) -> Instruction:
    (found,) = [ins for ins in final_stage() if ins.name == name]
    return found


def docker_cmd() -> list[str]:
    argv = json.loads(docker_one("CMD").args)  # exec form: no shell between docker and the tool
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def docker_healthcheck() -> tuple[dict[str, str], list[str]]:
    args = docker_one("HEALTHCHECK").args
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", args.partition("CMD")[0]))
    return options, json.loads(args.partition("CMD")[2])


def option(argv: list[str], name: str) -> str | None:
    """The last value of --name in argv (argparse's last one wins)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(name + "="):
            found = arg.partition("=")[2]
    return found


def with_option(argv: list[str], name: str, new: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(name) + 1] = new
    return argv


# --- running them here ---------------------------------------------------------------------------

class Server:
    """The install locations of the deploy files, mapped into a temporary directory."""

    def __init__(self, tmp: Path, bin_dir: Path = VENV_BIN) -> None:
        self.tmp = tmp
        self.map = {
            INSTALL_BIN: f"{bin_dir}/", INSTALL: str(ROOT), "/etc/library-systems-tools": str(tmp / "etc-lst"),
            "/etc/lcpp": str(tmp / "etc-lcpp"), "/srv/m2/export": str(tmp / "export"),
            "/var/log/m2-code-store": str(tmp / "log-m2"), "/var/log/lcpp": str(tmp / "log-lcpp"),
        }
        for local in self.map.values():
            if local.startswith(str(tmp)):
                Path(local).mkdir(parents=True, exist_ok=True)
        (tmp / "home").mkdir(exist_ok=True)

    def local(self, text: str) -> str:
        for path in sorted(self.map, key=len, reverse=True):
            text = text.replace(path, self.map[path])
        return text

    def path(self, server_path: str) -> Path:
        return Path(self.local(server_path))

    def install_env(self, example: str, **filled: str) -> Path:
        """Install deploy/EXAMPLE as the unit would find it, with some of its variables filled in."""
        lines = (DEPLOY / example).read_text(encoding="utf-8").splitlines()
        for name, val in filled.items():
            (index,) = [i for i, line in enumerate(lines) if line.startswith(f"{name}=")]  # the example has it
            lines[index] = f"{name}='{val}'"
        target = self.path(f"/etc/library-systems-tools/{example.removesuffix('.example')}")
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return target

    def base_env(self) -> dict[str, str]:
        """What systemd or cron gives every job before its own settings: no store, no secrets."""
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.tmp / "home"), "LANG": "C.UTF-8"}

    def service(self, name: str) -> tuple[list[str], dict[str, str], Path]:
        """(argv, environment, working directory) of a unit's ExecStart= as systemd would run it here."""
        unit = load_unit(name)
        env = self.base_env()
        for env_file in values(unit, "Service", "EnvironmentFile"):
            env.update(parse_env_file(self.path(env_file.lstrip("-"))))
        for assignment in values(unit, "Service", "Environment"):
            for item in shlex.split(assignment):
                key, _, val = item.partition("=")
                env[key] = val
        argv = [self.local(arg) for arg in exec_argv(value(unit, "Service", "ExecStart"))]
        workdir = self.path(value(unit, "Service", "WorkingDirectory").lstrip("-"))
        return argv, env, workdir

    def cron(self, job: CronJob) -> tuple[list[str], dict[str, str]]:
        """(argv, environment) of a cron job as cron runs it: $SHELL -c COMMAND with the file's variables."""
        assert "%" not in job.command  # cron would turn it into a newline
        env = {**self.base_env(), **CRON_ENV, "LOGNAME": job.user}
        return [CRON_ENV["SHELL"], "-c", self.local(job.command)], env


def success_statuses(unit: Unit) -> set[int]:
    extra = " ".join(values(unit, "Service", "SuccessExitStatus")).split()
    return {0, *(int(s) for s in extra)}


def unit_alerts(name: str, status: int | str) -> bool:
    """Whether systemd marks the unit failed (and OnFailure= mails) after a run that ends so."""
    if status == "signal":  # SIGTERM/SIGINT/SIGHUP/SIGPIPE deaths are clean to systemd
        return False
    return status not in success_statuses(load_unit(name))


def write_clean_export(path: Path) -> Path:
    path.write_text("Item barcode,Accession date,Customer code,Delete date\n"
                    "39000001,2024-01-01,NX,\n39000002,2024-01-01,NY,\n39000003,2024-01-01,,2024-03-01\n",
                    encoding="utf-8")
    return path


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def holding_data(redis_url: str, tmp_path: Path) -> None:
    """A store with a data set: one record loaded."""
    export = tmp_path / "one.csv"
    export.write_text("Item barcode,Accession date,Customer code,Delete date\n39000009,,NX,\n")
    load(redis.Redis.from_url(redis_url), read_export(export))


def wait_for_http(url: str, process: subprocess.Popen, seconds: float = 60) -> tuple[int, dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited {process.returncode}: {process.communicate()}"
        try:
            return get(url)
        except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; any still running at the end is stopped."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


# --- the systemd units -------------------------------------------------------------------------------

UNITS = sorted(p.name for p in DEPLOY.iterdir() if p.suffix in (".service", ".timer"))


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing to say about any unit: no unknown key, no bad value, and
    every ExecStart= binary exists (the install path mapped to this checkout's .venv)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine; the units' own checks below still run")
    for name in UNITS:
        (tmp_path / name).write_text(Server(tmp_path / "srv").local((DEPLOY / name).read_text(encoding="utf-8")))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *UNITS], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("name", [*UNITS, "crontab.example"])
def test_every_path_is_an_install_location_or_a_system_command(name: str, tmp_path: Path) -> None:
    """The files name only the documented install locations (which the tests map, so running a
    command here never touches this machine's /etc or /var) and a few commands every Linux has."""
    assert set(Server(tmp_path).map) == set(INSTALL_LOCATIONS)
    for line in (DEPLOY / name).read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        for path in re.findall(r"(?<![\w.:/*-])/[\w.@*-]+(?:/[\w.@*-]+)*", line):
            assert path in SYSTEM_PATHS or any(path.startswith(place) for place in INSTALL_LOCATIONS), (name, path)


@pytest.mark.parametrize("name", TOOL_SERVICES)
def test_tool_services_run_a_console_script_the_project_installs(name: str) -> None:
    """Each ExecStart= names a [project.scripts] entry under the installation's venv, which this
    checkout's installation has too."""
    argv = exec_argv(value(load_unit(name), "Service", "ExecStart"))
    assert argv[0].startswith(INSTALL_BIN) and argv[0].removeprefix(INSTALL_BIN) in SCRIPTS
    assert (VENV_BIN / argv[0].removeprefix(INSTALL_BIN)).exists()


def parse_tool_command(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> object:
    """argv[1:] parsed by the tool's own argument parser (argparse exits 2 on anything it refuses)."""
    script = Path(argv[0]).name
    if script == "write_csv_to_redis":
        return loader_parse_args(argv[1:])
    if script == "m2-code-store":
        parsed = []
        monkeypatch.setattr(m2_cli, "serve", lambda args: parsed.append(args) or 0)
        assert m2_cli.main(argv[1:]) == 0
        return parsed[0]
    if script == "libcal-passagepoint":
        return lcpp_cli._parser().parse_args(argv[1:])
    raise AssertionError(f"no parser known for {script}")


COMMANDS = {
    **{name: exec_argv(value(load_unit(name), "Service", "ExecStart")) for name in TOOL_SERVICES},
    **{f"crontab: {job.user}": cron_tool_argv(job) for job in CRON_JOBS},
    "Dockerfile CMD": docker_cmd(),
}


@pytest.mark.parametrize("where", COMMANDS)
def test_every_command_line_is_accepted_by_its_tools_own_parser(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The options in the units, the crontab and the Dockerfile are ones the CLIs accept, with the
    meaning intended (an absolute --config; serve on a port)."""
    args = parse_tool_command(COMMANDS[where], monkeypatch)
    if hasattr(args, "config"):
        assert Path(args.config).is_absolute()
    if hasattr(args, "port"):
        assert args.server == "granian" and args.host == "0.0.0.0" and args.port == 8000
    if hasattr(args, "csv_file"):
        assert args.csv_file.is_absolute() and args.replace and not args.dry_run


def test_the_api_unit_and_the_image_serve_the_same_way() -> None:
    """The Dockerfile's CMD is the unit's command but for the workers (the container's CPU limit)."""
    unit_argv = exec_argv(value(load_unit("m2-api.service"), "Service", "ExecStart"))
    assert [Path(unit_argv[0]).name, *unit_argv[1:]] == docker_cmd()[:len(unit_argv)]
    assert docker_cmd()[len(unit_argv):] == ["--workers", "2"]


@pytest.mark.parametrize("name", ["m2-loader.timer", "lcpp-sync.timer"])
def test_each_timer_starts_its_service_which_is_a_oneshot_pass(name: str) -> None:
    """A timer's Unit= is a service shipped here, run once per elapse, and the timer is enabled with timers.target."""
    timer = load_unit(name)
    service_name = value(timer, "Timer", "Unit") or name.replace(".timer", ".service")
    assert service_name == name.replace(".timer", ".service") and (DEPLOY / service_name).exists()
    assert value(load_unit(service_name), "Service", "Type") == "oneshot"
    assert values(timer, "Install", "WantedBy") == ["timers.target"]
    assert not load_unit(service_name).get("Install"), "a timer's service is started by the timer, not enabled"


@pytest.mark.parametrize(("name", "normalized", "persistent"), [
    ("m2-loader.timer", "*-*-* 02:30:00", "true"),   # nightly; a night missed while down runs at boot
    ("lcpp-sync.timer", "*-*-* *:00/5:00", None),    # every 5 minutes, as cron's */5; no catching up
])
def test_timers_fire_when_the_readme_says(name: str, normalized: str, persistent: str | None) -> None:
    """OnCalendar= is what systemd itself reads it as (systemd-analyze calendar, when installed)."""
    timer = load_unit(name)
    (calendar,) = values(timer, "Timer", "OnCalendar")
    assert value(timer, "Timer", "Persistent") == persistent
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: OnCalendar= is not normalized here")
    done = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"Normalized form: {normalized}\n" in done.stdout, done.stdout + done.stderr


def test_units_named_by_other_units_are_shipped() -> None:
    """OnFailure=, Conflicts= and Unit= name units in deploy/ (systemd-analyze verify does not check it)."""
    for name in UNITS:
        unit = load_unit(name)
        for key in ("OnFailure", "Conflicts"):
            for named in " ".join(values(unit, "Unit", key)).split():
                template = re.sub(r"@.*\.service$", "@.service", named)
                assert (DEPLOY / template).exists(), f"{name}: {key}={named}"
    assert values(load_unit("lcpp-sync-every.service"), "Unit", "Conflicts") == ["lcpp-sync.timer lcpp-sync.service"]
    for name in TOOL_SERVICES:
        assert values(load_unit(name), "Unit", "OnFailure") == ["failure-mail@%n.service"]


@pytest.mark.parametrize("name", TOOL_SERVICES)
def test_tool_services_run_as_their_user_with_secrets_from_an_example_env_file(name: str) -> None:
    """A dedicated user (as in the crontab), a working directory, and one EnvironmentFile= that is an
    example here; the store is never the embedded one."""
    unit = load_unit(name)
    user = value(unit, "Service", "User")
    assert user in {"m2store", "lcpp"} and value(unit, "Service", "Group") == user
    assert value(unit, "Service", "WorkingDirectory")
    (env_file,) = values(unit, "Service", "EnvironmentFile")
    assert env_file.startswith("/etc/library-systems-tools/")  # required: no '-', a missing file fails the start
    assert (DEPLOY / (Path(env_file).name + ".example")).exists()
    tool = Path(exec_argv(value(unit, "Service", "ExecStart"))[0]).name
    assert user == cron_job("write_csv_to_redis" if tool == "m2-code-store" else tool).user
    assert "M2_STORE" not in " ".join(values(unit, "Service", "Environment"))


@pytest.mark.parametrize("name", TOOL_SERVICES)
def test_hardening_leaves_writable_exactly_what_the_tool_writes(name: str) -> None:
    """ProtectSystem=strict makes everything read-only; the loader may write beside its export, the
    sync beside its configuration (its cache, -wal/-shm and .lock), the API nowhere."""
    unit = load_unit(name)
    assert value(unit, "Service", "ProtectSystem") == "strict" and value(unit, "Service", "NoNewPrivileges") == "yes"
    writable = values(unit, "Service", "ReadWritePaths")
    argv = exec_argv(value(unit, "Service", "ExecStart"))
    if "write_csv_to_redis" in argv[0]:
        assert writable == [f"-{Path(argv[1]).parent}"]
    elif "libcal-passagepoint" in argv[0]:
        assert writable == [f"-{Path(option(argv, '--config')).parent}"]
        assert value(unit, "Service", "UMask") == "0077"  # the cache holds patron data
    else:
        assert writable == []
    assert not values(unit, "Service", "MemoryDenyWriteExecute"), "not verified with pyarrow, numpy and granian"


def test_exit_statuses_alert_as_decided() -> None:
    """Loader: 1 (rows skipped or stopped part-way) and 2 (nothing done) fail the unit; 143 (a
    systemctl stop, cleaned up) does not. Sync: 2 fails, 1 (a booking failed, which the tool itself
    reports once and retries) does not."""
    for name, table in ALERTS.items():
        for status, alerts in table.items():
            assert unit_alerts(name, status) == alerts, f"{name}: exit status {status}"
    assert not values(load_unit("m2-api.service"), "Service", "SuccessExitStatus")
    assert not values(load_unit("lcpp-sync-every.service"), "Service", "SuccessExitStatus")


def test_restart_policies() -> None:
    """The API always comes back, within a start limit; --every comes back after exit 2; passes never restart."""
    api, every = load_unit("m2-api.service"), load_unit("lcpp-sync-every.service")
    assert value(api, "Service", "Restart") == "always" and value(api, "Unit", "StartLimitBurst") == "5"
    assert value(every, "Service", "Restart") == "on-failure" and value(every, "Unit", "StartLimitBurst") == "5"
    for name in ("m2-loader.service", "lcpp-sync.service"):
        assert value(load_unit(name), "Service", "Restart") is None


@pytest.mark.parametrize(("name", "at_least"), [
    ("m2-loader.service", 60),        # an interrupted --replace deletes its partial data set
    ("lcpp-sync.service", 120),       # bookings in flight finish: a few calls of LCPP.timeout (30 s)
    ("lcpp-sync-every.service", 120),
    ("m2-api.service", GracefulTimeout.default + 1),  # gunicorn waits up to its graceful timeout for workers
])
def test_stop_signal_and_timeout_give_the_tools_their_clean_up(name: str, at_least: float) -> None:
    """SIGTERM is the signal each tool handles; SIGKILL comes only after the clean-up has had time.
    KillMode=mixed: the main process alone gets SIGTERM (granian stops its own workers)."""
    unit = load_unit(name)
    assert value(unit, "Service", "KillSignal") == "SIGTERM" and value(unit, "Service", "KillMode") == "mixed"
    assert parse_timespan(value(unit, "Service", "TimeoutStopSec")) >= at_least
    if value(unit, "Service", "Type") == "oneshot":  # a oneshot has no start timeout unless given one
        assert parse_timespan(value(unit, "Service", "TimeoutStartSec")) > 0


# --- environment files ----------------------------------------------------------------------------

def variables_in_source(*packages: str) -> set[str]:
    """Every UPPER_CASE string constant in the packages' code: the names they could read from the environment."""
    names = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.value):
                    names.add(node.value)
    return names


TOOL_VARS = {
    "m2-code-store.env.example": variables_in_source("m2_code_store", "toolconfig"),
    "lcpp.env.example": set(LCPP_SECRET_VARS.values()),
}


@pytest.mark.parametrize("example", ENV_EXAMPLES)
def test_env_examples_name_only_variables_their_tools_read(example: str) -> None:
    """Every variable an example sets (or shows commented out) is one the tool it is for reads."""
    assert documented_vars(DEPLOY / example) <= TOOL_VARS[example]


def test_lcpp_env_example_has_every_secret_the_sync_takes_from_the_environment() -> None:
    assert set(parse_env_file(DEPLOY / "lcpp.env.example")) == set(LCPP_SECRET_VARS.values())


def test_m2_env_example_has_every_store_setting_and_never_the_embedded_store() -> None:
    env = parse_env_file(DEPLOY / "m2-code-store.env.example")
    assert set(env) == {"REDIS_URL", "REDIS_ENDPOINT_ENCRYPTED", "AWS_REGION", "REDIS_TLS", "M2_MAX_BARCODES"}
    assert "M2_STORE" not in documented_vars(DEPLOY / "m2-code-store.env.example")


def test_m2_env_example_as_shipped_refuses_to_start_rather_than_use_a_local_store() -> None:
    """Installed unedited, its empty settings make the loader and the API refuse (no terminal): no
    load into, nor lookups from, a store that is not production's."""
    with pytest.raises(ConfigError) as refused:
        resolve_target(parse_env_file(DEPLOY / "m2-code-store.env.example"), interactive=False)
    assert str(refused.value) == NO_STORE


def test_lcpp_env_example_as_shipped_overrides_nothing_in_config_yml(tmp_path: Path) -> None:
    """Its empty values count as unset: the secrets in config.yml are used until one is filled in."""
    env = parse_env_file(DEPLOY / "lcpp.env.example")
    assert set(env.values()) == {""}
    config = tmp_path / "config.yml"
    shutil.copy(ROOT / "libcal_passagepoint" / "config.example.yml", config)
    assert load_config(config, environ=env).passagepoint.password == "change-me"


@pytest.mark.parametrize("example", ENV_EXAMPLES)
def test_env_files_read_the_same_by_systemd_and_by_cron_s_sh(example: str, tmp_path: Path) -> None:
    """The crontab sources the file the units read: filled in as its comments say (single quotes
    around a value with spaces or $), sh sees what systemd does (by systemd's rules as
    parse_env_file models them: quotes stripped, nothing expanded)."""
    server = Server(tmp_path)
    names = sorted(parse_env_file(DEPLOY / example))
    path = server.install_env(example, **{name: f"v {i} $x `y` \"z\"" for i, name in enumerate(names)})
    done = subprocess.run(["/bin/sh", "-c", f'set -a; . "{path}"; set +a; env -0'], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, check=True)
    seen_by_sh = dict(item.partition("=")[::2] for item in done.stdout.split("\0") if item)
    assert {name: seen_by_sh[name] for name in names} == parse_env_file(path)


@pytest.mark.parametrize("name", TOOL_SERVICES)
def test_units_set_only_variables_python_reads(name: str) -> None:
    """Environment= lines hold no setting of the tools (those live in the env files), only Python's."""
    for assignment in values(load_unit(name), "Service", "Environment"):
        for item in shlex.split(assignment):
            assert item.partition("=")[0] in PYTHON_VARS


# --- the units, run here -----------------------------------------------------------------------------

def test_loader_unit_loads_the_export_into_the_store_its_env_file_names(tmp_path: Path, redis_url: str,
                                                                        redis_client: redis.Redis) -> None:
    """m2-loader.service's command, environment and working directory load the export (exit 0);
    installed unedited, the env file makes it refuse with exit 2, which fails the unit."""
    server = Server(tmp_path)

    def run_unit() -> subprocess.CompletedProcess:
        argv, env, workdir = server.service("m2-loader.service")
        write_clean_export(Path(argv[1]))
        return subprocess.run(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120)

    server.install_env("m2-code-store.env.example")
    done = run_unit()
    assert done.returncode == 2 and NO_STORE in done.stderr
    assert unit_alerts("m2-loader.service", done.returncode)

    server.install_env("m2-code-store.env.example", REDIS_URL=redis_url)
    done = run_unit()
    assert done.returncode == 0, done.stderr
    assert "3 rows: 2 written, 1 deleted (0 removed from the store), 0 skipped; 2 records in the store" in done.stdout
    assert CodeStore(redis_client).lookup(["39000001", "39000002", "39000003"]) == ["NX", "NY", None]


def test_api_unit_serves_health_reloads_and_stops_on_its_kill_signal(tmp_path: Path, redis_url: str,
                                                                    started: list[subprocess.Popen]) -> None:
    """m2-api.service's command serves /health from the store in its env file; ExecReload's SIGHUP
    respawns the workers without stopping the service; KillSignal stops it within TimeoutStopSec
    with a status systemd counts as clean."""
    holding_data(redis_url, tmp_path)  # /health answers 503 on an empty store
    server = Server(tmp_path)
    server.install_env("m2-code-store.env.example", REDIS_URL=redis_url)
    argv, env, workdir = server.service("m2-api.service")
    port = free_port()
    argv = with_option(with_option(argv, "--host", "127.0.0.1"), "--port", str(port))
    process = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started.append(process)
    url = f"http://127.0.0.1:{port}/health"
    status, body = wait_for_http(url, process)
    assert (status, body["status"], body["store"]) == (200, "ok", "up")

    unit = load_unit("m2-api.service")
    assert value(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    process.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert wait_for_http(url, process)[0] == 200

    process.send_signal(getattr(signal, value(unit, "Service", "KillSignal")))
    _, err = process.communicate(timeout=parse_timespan(value(unit, "Service", "TimeoutStopSec")))
    assert process.returncode in success_statuses(unit), err
    assert f"serving the M2 customer code API on http://127.0.0.1:{port} (store: {redis_url})" in err


def config_without_secrets(sims: Sims, path: Path) -> Path:
    """The simulators' config.yml with every secret taken out and the cache at its default, beside it."""
    text = sims.config_path.read_text(encoding="utf-8")
    for line in ("  client_id: 1234\n", "  client_secret: 1234567c7be467e51fc47157abcdefg\n",
                 "  apikeys:\n    - zone-one-key\n    - zone-two-key\n", "  username: svc\n", "  password: pw\n",
                 f"  cache_path: {sims.tmp_path / 'cache.sqlite3'}\n"):
        assert line in text
        text = text.replace(line, "")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LcppConfigError):
        load_config(path, environ={})
    return path


SIM_SECRETS = {"LIBCAL_CLIENT_ID": "1234", "LIBCAL_CLIENT_SECRET": "1234567c7be467e51fc47157abcdefg",
               "ALMA_API_KEYS": "zone-one-key,zone-two-key", "PASSAGEPOINT_USERNAME": "svc",
               "PASSAGEPOINT_PASSWORD": "pw"}


async def run_async(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, str, str]:
    """Run a process without blocking the event loop the simulators answer in."""
    process = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(), err.decode()


def dated(argv: list[str]) -> list[str]:
    """The simulators' bookings are on DAY: the pass fetches that day instead of today."""
    return [*argv, "--date", DAY]


async def test_sync_unit_runs_a_pass_with_its_secrets_from_the_env_file(sims: Sims, tmp_path: Path) -> None:
    """lcpp-sync.service's command, with config.yml holding no secret and the env file holding them,
    registers the booking (exit 0); its cache is created beside the configuration, in the one
    directory the unit makes writable; logs are JSON lines. Refused credentials exit 2 and fail it."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    server = Server(tmp_path)
    config_without_secrets(sims, server.path("/etc/lcpp/config.yml"))
    server.install_env("lcpp.env.example", **SIM_SECRETS)
    argv, env, workdir = server.service("lcpp-sync.service")
    code, out, err = await run_async(dated(argv), env, workdir)
    assert code == 0, err
    assert out.startswith("pass: 1 booking(s) fetched, 1 registered, 0 failed")
    assert all(json.loads(line)["level"] for line in err.splitlines())
    writable = Path(server.local(value(load_unit("lcpp-sync.service"), "Service", "ReadWritePaths").lstrip("-")))
    with Cache(writable / "lcpp_cache.sqlite3", read_only=True) as cache:
        assert cache.counts()["registered"] == 1
    assert oct((writable / "lcpp_cache.sqlite3").stat().st_mode & 0o777) == "0o600"

    server.install_env("lcpp.env.example", **{**SIM_SECRETS, "LIBCAL_CLIENT_SECRET": "wrong"})
    argv, env, workdir = server.service("lcpp-sync.service")
    code, _, err = await run_async(dated(argv), env, workdir)
    assert code == 2, err
    assert unit_alerts("lcpp-sync.service", code)


async def test_sync_every_unit_stops_on_its_kill_signal_with_a_clean_status(sims: Sims, tmp_path: Path) -> None:
    """lcpp-sync-every.service's command passes until SIGTERM (its KillSignal), then exits 0 well
    within TimeoutStopSec, so a systemctl stop is not a failure and Restart=on-failure does not fire."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    server = Server(tmp_path)
    config_without_secrets(sims, server.path("/etc/lcpp/config.yml"))
    server.install_env("lcpp.env.example", **SIM_SECRETS)
    argv, env, workdir = server.service("lcpp-sync-every.service")
    assert "--every" in argv
    process = await asyncio.create_subprocess_exec(*dated(argv), env=env, cwd=workdir, stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        first = await asyncio.wait_for(process.stdout.readline(), 60)
        assert first.decode().startswith("pass: 1 booking(s) fetched, 1 registered"), first
        unit = load_unit("lcpp-sync-every.service")
        process.send_signal(getattr(signal, value(unit, "Service", "KillSignal")))
        _, err = await asyncio.wait_for(process.communicate(), parse_timespan(value(unit, "Service", "TimeoutStopSec")))
        assert process.returncode == 0, err.decode()
        assert "SIGTERM received" in err.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_failure_mail_template_mails_the_failed_unit_s_status(tmp_path: Path) -> None:
    """failure-mail@.service's command, with systemd's %i, %H and $$ filled in, pipes the failed
    unit's status into `mail -s "<unit> failed on <host>" root` (stand-ins for systemctl and mail)."""
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    (stub_bin / "systemctl").write_text('#!/bin/sh\necho "systemctl $*"\n')
    (stub_bin / "mail").write_text(f'#!/bin/sh\n{{ printf "%s\\n" "$@"; cat; }} > "{tmp_path}/mail"\n')
    for stub in stub_bin.iterdir():
        stub.chmod(0o755)
    command = value(load_unit("failure-mail@.service"), "Service", "ExecStart")
    host = socket.gethostname()
    command = command.replace("%i", "m2-loader.service").replace("%H", host).replace("$$", "$")
    assert "%" not in command and command.startswith("/bin/sh ")
    done = subprocess.run(shlex.split(command), env={"PATH": f"{stub_bin}:/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mail").read_text().splitlines() == [
        "-s", f"m2-loader.service failed on {host}", "root",
        "systemctl status --full --no-pager --lines=50 m2-loader.service",
    ]


# --- the crontab ---------------------------------------------------------------------------------------

def test_crontab_jobs_are_well_formed_and_run_what_the_units_run() -> None:
    """Valid time fields (nightly load, sync every 5 minutes), the units' users, the units' exact
    command lines, no flock (the tools lock themselves), MAILTO and an absolute PATH."""
    schedules = {}
    for job in CRON_JOBS:
        assert all(valid_cron_field(f, low, high) for f, (low, high) in zip(job.schedule, CRON_RANGES, strict=True))
        assert "flock" not in job.command and "%" not in job.command
        argv = cron_tool_argv(job)
        (name,) = [n for n in ("m2-loader.service", "lcpp-sync.service")
                   if exec_argv(value(load_unit(n), "Service", "ExecStart")) == argv]
        assert job.user == value(load_unit(name), "Service", "User")
        (env_file,) = values(load_unit(name), "Service", "EnvironmentFile")
        assert job.command.startswith(f"set -a; . {env_file}; set +a; ")
        schedules[name] = job.schedule
    assert schedules == {"m2-loader.service": ["30", "2", "*", "*", "*"], "lcpp-sync.service": ["*/5", "*", "*", "*", "*"]}
    assert CRON_ENV["MAILTO"] and CRON_ENV["SHELL"] == "/bin/sh"
    assert all(Path(p).is_absolute() for p in CRON_ENV["PATH"].split(":"))
    assert set(CRON_ENV) - {"SHELL", "PATH", "MAILTO"} <= set(PYTHON_VARS)


def log_of(job: CronJob) -> str:
    (log,) = re.findall(r">>(\S+) 2>&1", job.command)
    return log


def test_crontab_loader_line_logs_with_timestamps_and_mails_only_when_needed(tmp_path: Path, redis_url: str,
                                                                             redis_client: redis.Redis) -> None:
    """The loader's cron line, run as cron runs it: its output goes to the log between timestamped
    start and exit lines and nothing is mailed; rows skipped (exit 1) mail one line naming the log."""
    server = Server(tmp_path)
    server.install_env("m2-code-store.env.example", REDIS_URL=redis_url)
    job = cron_job("write_csv_to_redis")
    export = Path(server.local(cron_tool_argv(job)[1]))
    write_clean_export(export)
    argv, env = server.cron(job)
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    log = server.path(log_of(job)).read_text().splitlines()
    assert re.fullmatch(r"== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d start", log[0])
    assert any(line.startswith("read 3 rows: 2 written") for line in log)
    assert re.fullmatch(r"== \S+ exit status 0", log[-1])
    assert CodeStore(redis_client).lookup(["39000001"]) == ["NX"]

    redis_client.flushall()  # else --replace refuses the sample, which lacks the clean export's barcodes
    shutil.copy(ROOT / "m2_code_store" / "sample" / "las_sample.csv", export)  # 4 bad rows in it
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.stdout + done.stderr == f"write_csv_to_redis exited 1: see {server.local(log_of(job))}\n"


async def test_crontab_sync_line_logs_and_mails_only_when_nothing_was_done(sims: Sims, tmp_path: Path) -> None:
    """The sync's cron line: a pass with a failed booking (exit 1) mails nothing, its JSON log lines
    and summary go to the log; refused credentials (exit 2) mail one line."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    sims.add_booking("cs_noid", None, first_name="No", last_name="Id", hour=16)
    server = Server(tmp_path)
    config_without_secrets(sims, server.path("/etc/lcpp/config.yml"))
    server.install_env("lcpp.env.example", **SIM_SECRETS)
    job = cron_job("libcal-passagepoint")
    job = CronJob(job.schedule, job.user, job.command.replace("config.yml;", f"config.yml --date {DAY};"))
    argv, env = server.cron(job)
    code, out, err = await run_async(argv, env)
    assert (code, out + err) == (0, "")
    log = server.path(log_of(job)).read_text().splitlines()
    assert "pass: 2 booking(s) fetched, 1 registered, 1 failed, 0 uncertain" in "\n".join(log)
    assert any(line.startswith("{") and json.loads(line)["level"] == "error" for line in log)
    assert re.fullmatch(r"== \S+ exit status 1", log[-1])

    server.install_env("lcpp.env.example", **{**SIM_SECRETS, "LIBCAL_CLIENT_SECRET": "wrong"})
    code, out, err = await run_async(argv, env)
    assert out + err == f"libcal-passagepoint run exited 2: see {server.local(log_of(job))}\n"


@pytest.mark.parametrize(("script", "unit", "status"), [
    (script, unit, status)
    for script, unit in (("write_csv_to_redis", "m2-loader.service"), ("libcal-passagepoint", "lcpp-sync.service"))
    for status in ALERTS[unit]
])
def test_crontab_mails_for_the_exit_statuses_the_units_fail_on(script: str, unit: str, status: int | str,
                                                               tmp_path: Path) -> None:
    """Each cron line mails exactly when its systemd unit would fail (a stand-in tool ends with each
    status; "signal" dies of SIGTERM, as a sync stopped before its pass does)."""
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    stub = stub_bin / script
    stub.write_text("#!/bin/sh\n" + ("kill -TERM $$\n" if status == "signal" else f"exit {status}\n"))
    stub.chmod(0o755)
    server = Server(tmp_path, bin_dir=stub_bin)
    for example in ENV_EXAMPLES:
        server.install_env(example)
    argv, env = server.cron(cron_job(script))
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert bool(done.stdout + done.stderr) == unit_alerts(unit, status) == ALERTS[unit][status], done.stdout


def test_logrotate_example_rotates_each_cron_log_as_its_user() -> None:
    text = (DEPLOY / "logrotate.example").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"^(\S+) \{\n(.*?)^\}", text, re.M | re.S))
    for job in CRON_JOBS:
        pattern = str(Path(log_of(job)).parent / "*.log")
        assert pattern in blocks, pattern
        assert f"su {job.user} {job.user}" in blocks[pattern] and f"create 0640 {job.user} {job.user}" in blocks[pattern]


# --- the Dockerfile ------------------------------------------------------------------------------------

def test_dockerfile_builds_the_api_on_slim_python_as_a_non_root_user() -> None:
    """Both stages on python:3.11-slim; no dev extras; the final stage runs as a numeric non-root
    user, exposes the CMD's port, and its HEALTHCHECK asks that port's /health."""
    froms = [ins.args for ins in DOCKERFILE if ins.name == "FROM"]
    assert all(re.fullmatch(r"python:3\.1[12]-slim(-\w+)?( AS \w+)?", f) for f in froms), froms
    assert froms[0].split()[0] == froms[-1], "the venv is copied between stages: same Python in both"
    (install,) = [ins.args for ins in DOCKERFILE if ins.name == "RUN" and "pip install" in ins.args]
    assert "[dev]" not in install and "-e " not in install
    user = docker_one("USER").args.split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user)
    expose = docker_one("EXPOSE").args
    assert option(docker_cmd(), "--port") == expose and option(docker_cmd(), "--host") == "0.0.0.0"
    assert docker_cmd()[0] in SCRIPTS
    assert "/opt/venv/bin" in docker_one("ENV").args.split("PATH=")[1].split(":")[0]
    options, health = docker_healthcheck()
    assert f"'http://127.0.0.1:{expose}/health'" in health[-1]
    assert parse_timespan(options["timeout"]) > 4  # the check's own urlopen timeout
    assert [ins.name for ins in final_stage()].index("USER") < [ins.name for ins in final_stage()].index("CMD")


def first_party_imports(package: str) -> set[str]:
    """Top-level names of the project's packages that *package* imports."""
    project = {"m2_code_store", "loan_discharge", "libcal_passagepoint", "toolconfig", "simulators"}
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found & project


def dockerignore_keeps(path: str, patterns: list[str]) -> bool:
    """Whether a context path survives the ignore file (last matching pattern wins; a pattern on a
    directory covers what is in it; ``**/`` matches at any depth)."""
    from fnmatch import fnmatchcase

    keep = True
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        if body.startswith("**/"):
            hit = any(fnmatchcase(part, body[3:]) for part in parts)
        else:
            hit = any(fnmatchcase(prefix, body) for prefix in prefixes)
        if hit:
            keep = negate
    return keep


def test_dockerfile_copies_everything_the_api_needs_and_the_ignore_file_keeps_it() -> None:
    """The COPY'd packages are the API's and every project package it imports; pyproject.toml and
    the README it names are there for the build; Dockerfile.dockerignore lets all of it through and
    keeps .venv and .git out."""
    copied = {src.rstrip("/") for ins in DOCKERFILE if ins.name == "COPY" and not ins.args.startswith("--from")
              for src in ins.args.split()[:-1]}
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied
    needed = {"m2_code_store"} | first_party_imports("m2_code_store")
    assert {c for c in copied if (ROOT / c).is_dir()} == needed
    patterns = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for package in needed:
        for path in (ROOT / package).rglob("*"):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file():
                assert dockerignore_keeps(relative, patterns) == ("__pycache__" not in relative), relative
    assert dockerignore_keeps("pyproject.toml", patterns) and dockerignore_keeps("README.md", patterns)
    for left_out in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "libcal_passagepoint/cli.py"):
        assert not dockerignore_keeps(left_out, patterns), left_out


def test_docker_cmd_serves_and_its_healthcheck_tells_healthy_from_unhealthy(tmp_path: Path, redis_url: str,
                                                                            started: list[subprocess.Popen]) -> None:
    """The image's CMD, run here on a free port with the image's PATH, serves; the HEALTHCHECK
    command exits 0 against it, and 1 with a one-line reason against an API whose store is down (503)."""
    _, health = docker_healthcheck()
    expose = docker_one("EXPOSE").args
    holding_data(redis_url, tmp_path)
    results = {}
    for store in (redis_url, f"redis://127.0.0.1:{free_port()}/0"):
        port = free_port()
        argv = with_option(with_option(docker_cmd(), "--host", "127.0.0.1"), "--port", str(port))
        env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "REDIS_URL": store, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.append(process)
        wait_for_http(f"http://127.0.0.1:{port}/health", process)
        check = [sys.executable if health[0] == "python" else health[0], *health[1:-1],
                 health[-1].replace(f":{expose}/", f":{port}/")]
        done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        results[store == redis_url] = (done.returncode, done.stderr.strip())
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        assert process.returncode == 0
    assert results[True] == (0, "")
    assert results[False][0] == 1 and results[False][1].startswith("unhealthy: HTTP Error 503: "), results


# --- documentation -----------------------------------------------------------------------------------

def test_deploy_readme_covers_every_file_in_deploy() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for path in DEPLOY.iterdir():
        if path.name != "README.md":
            assert f"`{path.name}`" in readme, path.name


def test_top_readme_points_to_deploy_readme_below_its_first_screen() -> None:
    """The first screen stays the two commands; the pointer to deploy/README.md comes later."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    first_screen = "\n".join(lines[:24])
    assert "make demo" in first_screen and "make test" in first_screen and "deploy/" not in first_screen
    assert any("(deploy/README.md)" in line for line in lines[24:])
