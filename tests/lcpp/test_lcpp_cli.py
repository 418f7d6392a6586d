"""The command line as a user runs it: real processes, exit statuses, messages, signals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from lcpp_sims import DAY, Sims, write_config
from logtext import messages

from libcal_passagepoint.cache import Cache
from libcal_passagepoint.cli import main, parse_duration
from libcal_passagepoint.runner import cache_lock


async def _cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "libcal_passagepoint", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_run_exit_status_0_then_status_and_purge(sims: Sims) -> None:
    """`run` registers and exits 0; `status` shows counts and the last pass; `purge` drops old bookings."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    code, out, err = await _cli("run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 0, err
    assert out.startswith("pass: 1 booking(s) fetched, 1 registered, 0 failed, 0 uncertain")
    logs = [json.loads(line) for line in err.splitlines()]  # not a terminal: one JSON object per line
    assert any(entry["message"].startswith("registered booking cs_1 (Ada Lovelace)") for entry in logs)
    assert all("pw" != entry["message"] and "1234567c7be467e51fc47157abcdefg" not in entry["message"] for entry in logs)
    summary = [entry for entry in logs if entry.get("event") == "summary"]  # the printed line, logged with its counts
    assert [(e["message"], e["fetched"], e["registered"], e["failed"], e["exit_status"]) for e in summary] == [
        (out.splitlines()[0], 1, 1, 0, 0)]

    code, out, _ = await _cli("status", "--config", str(sims.config_path))
    assert code == 0
    assert "bookings: 1 registered, 0 failed, 0 uncertain, 0 intent, 0 cancelled" in out
    assert "exit status 0: 1 fetched, 1 registered, 0 failed, 0 uncertain" in out

    code, out, _ = await _cli("purge", "--older-than", "30d", "--config", str(sims.config_path))
    assert (code, out.strip()) == (0, f"purged 0 booking(s), 0 patron(s) with no booking left and 0 pass record(s) "
                                      f"older than 30d from {sims.config.cache_path}")


async def test_run_exits_1_when_a_booking_failed_and_status_lists_it(sims: Sims) -> None:
    """A failed booking: the pass finishes, exit status 1; `status` names the booking and the reason."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_ok", pid)
    sims.add_booking("cs_noid", None, first_name="No", last_name="Id", hour=16)
    code, out, _ = await _cli("run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 1
    assert "1 registered, 1 failed" in out
    code, out, _ = await _cli("status", "--cache", sims.config.cache_path)
    assert code == 0
    assert "failed cs_noid (No Id), 1 attempt(s), retry in " in out
    assert out.rstrip().endswith("no primary id: the LibCal booking has no answer to q12505 (if every booking says so, check LibCal.primary_id_field and LibCal.form_answers_param)")


async def test_dry_run_prints_the_plan_and_writes_nothing(sims: Sims) -> None:
    """--dry-run lists what it would register; PassagePoint sees no request and the cache stays empty."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    code, out, _ = await _cli("run", "--dry-run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 0
    assert "dry run: 1 booking(s) fetched, 1 to register, 0 would fail" in out
    assert "would register cs_1 (Ada Lovelace) at LibCal Gelman from 2030-01-15T13:15:00-05:00" in out
    assert "G00000001" not in out  # never a university id in what is printed
    assert sims.pp.count("") == 0
    with Cache(sims.config.cache_path) as cache:
        assert cache.counts()["registered"] == 0


async def test_dry_run_creates_no_cache_file_and_leaves_an_existing_one_unchanged(sims: Sims) -> None:
    """--dry-run writes nothing to the cache: no file (nor lock) is created, an existing file is only read."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    cache_path = Path(sims.config.cache_path)
    code, out, err = await _cli("run", "--dry-run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 0, err
    assert "dry run: 1 booking(s) fetched, 1 to register, 0 would fail" in out
    assert not cache_path.exists() and not Path(f"{cache_path}.lock").exists()

    code, _, err = await _cli("run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 0, err
    before = cache_path.read_bytes()
    sims.add_booking("cs_2", pid, hour=16)
    code, out, err = await _cli("run", "--dry-run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 0, err
    assert "dry run: 2 booking(s) fetched, 1 to register, 0 would fail, skipped 1 registered" in out
    assert cache_path.read_bytes() == before
    with Cache(cache_path) as cache:
        assert cache.booking("cs_2") is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_every_stops_cleanly_on_signal_after_the_current_bookings(sims: Sims, signum: int) -> None:
    """`run --every N`: SIGINT/SIGTERM mid-pass finish the bookings in flight, leave no open intent, exit 0."""
    sims.pp.latency = (0.2, 0.2)
    for n in range(1, 31):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n:02d}", pid, hour=6 + n % 12)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "libcal_passagepoint", "run", "--every", "60",
        "--config", str(sims.config_path), "--date", DAY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    for _ in range(600):
        if sims.pp.preregs:
            break
        await asyncio.sleep(0.01)
    assert sims.pp.preregs, "the pass never created a pre-registration"
    process.send_signal(signum)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert f"{signal.Signals(signum).name} received: finishing the current booking(s), then exiting" in err.decode()
    assert "interrupted" in out.decode()
    with Cache(sims.config.cache_path) as cache:
        counts = cache.counts()
    assert counts["intent"] == 0
    assert counts["registered"] == len(sims.pp.preregs) < 30


#: Runs ``python -m libcal_passagepoint ARGS`` and delivers a real SIGINT while cli.py imports aiohttp.
CTRL_C_WHILE_LOADING = """
import os, runpy, signal, sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["libcal_passagepoint", *sys.argv[1:]]
runpy.run_module("libcal_passagepoint", run_name="__main__", alter_sys=True)
"""


async def test_ctrl_c_before_the_pass_ends_with_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A Ctrl-C while the program is still loading: one line on stderr, exit 130, no cache created."""
    config = write_config(tmp_path / "config.yml", libcal="http://127.0.0.1:1", alma="http://127.0.0.1:1", pp="http://127.0.0.1:1")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CTRL_C_WHILE_LOADING, "run", "--config", str(config), cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert (process.returncode, out.decode(), err.decode()) == (130, "", "libcal_passagepoint: interrupted: nothing was done\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.yml"]


def _bad(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("    9911: LibCal Eckles\n", ""),
         "PassagePoint.location_mapping has no destination for LibCal location 9911 (Virginia Science & "
         "Technology Campus Library): add '9911: <PassagePoint destination name>'"),
        (lambda t: t.replace("  primary_id_field: q12505\n", ""), "LibCal.primary_id_field is missing"),
        (lambda t: t.replace("  interval: 300", "  interval: soon"), "LCPP.interval must be a whole number, not 'soon'"),
        (lambda t: t.replace("http://127.0.0.1:1/1.1/oauth/token", "booking.example.edu/1.1/oauth/token"),
         "LibCal.credentials_endpt must be an http(s) URL, not 'booking.example.edu/1.1/oauth/token'"),
        (lambda t: t.replace("  password: pw\n", ""),
         "PassagePoint.password is missing (set it in the file or in the environment variable PASSAGEPOINT_PASSWORD)"),
        (lambda t: t.replace("  apikeys:\n    - zone-one-key\n    - zone-two-key\n", "  apikeys: []\n"),
         "Alma.apikeys must be a list of Alma API keys, one per institution zone (or set ALMA_API_KEYS)"),
        (lambda t: t.replace("  login_endpt: /pp/api/v2/auth/login", "  login_endpt: https://pp/api/v2/auth/login"),
         "PassagePoint.login_endpt must be a path on the server such as /pp/api/v2/auth/login, not "
         "'https://pp/api/v2/auth/login'"),
        (lambda t: t.replace("LibCal:\n", "LibCalendar:\n"), "LibCalendar is not a known section: did you mean LibCal?"),
        (lambda t: t.replace("LCPP:\n", "LCPP:\n  concurency: 16\n"),
         "LCPP.concurency is not a known setting: did you mean LCPP.concurrency?"),
        (lambda t: t + "Email:\n  to_email: desk@example.edu\n", "Email is not a known section: did you mean Emails?"),
        (lambda t: t.replace("  user_mapping:\n", "  usermapping:\n"),
         "PassagePoint.usermapping is not a known setting: did you mean PassagePoint.user_mapping?"),
        (lambda t: t.replace("LCPP:\n", "LCPP:\n  retention: 30\n"),
         "LCPP.retention 30 has no unit: write 30d for days, 30h for hours or 30w for weeks"),
    ],
    ids=["no-destination", "no-primary-id-field", "bad-interval", "bad-url", "no-password", "no-apikeys", "bad-path",
         "misspelt-section", "misspelt-key", "email-for-emails", "misspelt-mapping", "retention-without-unit"],
)
def test_bad_configuration_is_refused_with_exit_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, message: str) -> None:
    """Nothing is done; the message names the key to fix."""
    text = write_config(tmp_path / "base.yml", libcal="http://127.0.0.1:1", alma="http://127.0.0.1:1", pp="http://127.0.0.1:1").read_text()
    assert edit(text) != text, "the edit must change the file"
    path = _bad(tmp_path / "config.yml", edit(text))
    env = {k: v for k, v in os.environ.items() if k not in ("PASSAGEPOINT_PASSWORD", "ALMA_API_KEYS")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "environ", env)
        patch.chdir(tmp_path)  # the default cache path is relative: nothing may be written
        assert main(["run", "--config", path]) == 2
    assert messages(capsys.readouterr().err) == [f"error: {path}: {message}"]
    assert not (tmp_path / "lcpp_cache.sqlite3").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--date", "22/11/2026"], "invalid date '22/11/2026': use YYYY-MM-DD"),
        (["run", "--days", "400"], "invalid --days '400': use a whole number from 0 to 365"),
        (["purge", "--older-than", "soon"], "--older-than 'soon' is not a duration: use e.g. 30d, 12h, 90m, 45s or 2w"),
        (["purge", "--older-than", "30"], "--older-than 30 has no unit: write 30d for days, 30h for hours or 30w for weeks"),
        (["purge"], "the following arguments are required: --older-than"),
        ([], "the following arguments are required: command"),
    ],
)
def test_bad_usage_exits_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad options: exit status 2 and argparse's message."""
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default config.yml is looked for in the working directory; the message names it absolutely."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert main(["run"]) == 2
    assert messages(capsys.readouterr().err) == [
        f"error: configuration file {tmp_path / 'config.yml'} not found: create it (see the template in the README) "
        "or pass --config PATH"
    ]


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 14 * 86400), ("600", 600)])
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations for run --every (a bare number is seconds, like LCPP.interval)."""
    assert parse_duration(text) == seconds


async def test_bad_libcal_credentials_exit_2(sims: Sims) -> None:
    """LibCal refusing the client secret is a configuration problem: exit 2 with the keys to check."""
    sims.libcal.client_secret = "rotated"
    code, _, err = await _cli("run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 2
    assert messages(err)[-1] == (
        "error: LibCal refused the client credentials (HTTP 400: The client credentials are invalid): "
        "check LibCal.client_id and LibCal.client_secret"
    )
    code, out, _ = await _cli("status", "--config", str(sims.config_path))
    assert code == 0
    assert "exit status 2: 0 fetched, 0 registered, 0 failed, 0 uncertain\n  stopped: LibCal refused the client " in out


async def test_a_refused_alma_key_exits_2_and_puts_nothing_on_backoff(sims: Sims) -> None:
    """A wrong Alma.apikeys entry is a configuration problem like LibCal's or PassagePoint's."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    sims.alma.api_keys = {"zone-two-key"}
    code, _, err = await _cli("run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 2
    assert messages(err)[-1].startswith("error: Alma refused API key #1 of Alma.apikeys (HTTP ")
    code, out, _ = await _cli("status", "--config", str(sims.config_path))
    assert "bookings: 0 registered, 0 failed, 0 uncertain, 0 intent, 0 cancelled" in out


async def test_a_stdout_that_cannot_be_written_does_not_end_the_run(sims: Sims) -> None:
    """stdout on a full disk: the pass is done and saved, the summary is in the log, a warning says
    why it is not on stdout, and the exit status is the pass's (`run --every` would go on)."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    with open("/dev/full", "w") as full:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "libcal_passagepoint", "run", "--config", str(sims.config_path), "--date", DAY,
            stdout=full, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
    logged = messages(err.decode())
    assert process.returncode == 0, err.decode()
    assert any(m.startswith("warning: could not print the summary on standard output (No space left on device); it "
                            "would have shown:\npass: 1 booking(s) fetched, 1 registered") for m in logged), logged
    assert any(m.startswith("pass: 1 booking(s) fetched, 1 registered") for m in logged)
    assert "Traceback" not in err.decode() and len(sims.pp.preregs) == 1


async def test_a_pass_stopped_by_an_outage_exits_1_and_status_says_why(sims: Sims) -> None:
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    sims.pp.inject_failure("login", "503_html")
    code, out, _ = await _cli("run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 1
    assert out.rstrip().endswith("; stopped early, 1 booking(s) left for the next pass")
    code, out, _ = await _cli("status", "--config", str(sims.config_path))
    assert "\n  stopped early, 1 booking(s) left for the next pass: PassagePoint login answered HTTP 503" in out


async def test_a_past_date_is_said_to_be_ignored_by_libcal(sims: Sims) -> None:
    """LibCal answers a past `date` with its today's bookings (libcal.md): the run says so."""
    code, _, err = await _cli("run", "--dry-run", "--config", str(sims.config_path), "--date", "2020-01-01")
    assert code == 0
    assert ("warning: --date 2020-01-01 is in the past: LibCal ignores a past date and answers with the bookings "
            "from its today on") in messages(err)
    code, _, err = await _cli("run", "--dry-run", "--config", str(sims.config_path), "--date", DAY)
    assert not any("in the past" in m for m in messages(err))


async def test_a_second_run_on_the_same_cache_is_refused(sims: Sims, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs never overlap on one cache: the second exits 2 and says which process holds which lock."""
    with cache_lock(sims.config.cache_path):
        code, _, err = await _cli("run", "--config", str(sims.config_path), "--date", DAY)
    assert code == 2
    assert messages(err)[-1] == (
        f"error: another libcal_passagepoint run (pid {os.getpid()}) holds {sims.config.cache_path}.lock: "
        "nothing was done; run again when it has finished"
    )
    assert sims.libcal.count("") == 0


async def test_log_file_quiet_and_version(sims: Sims, tmp_path: Path) -> None:
    """--log-file appends every log line as JSON (the summary and a refusal too); --quiet leaves only
    warnings and errors on stderr (not in the file), and the summary is still printed; --version exits 0."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    log_file = tmp_path / "sync.log"
    code, out, err = await _cli("run", "--quiet", "--log-file", str(log_file), "--config", str(sims.config_path), "--date", DAY)
    assert (code, messages(err)) == (0, [
        f"warning: created a new cache {sims.config.cache_path}: every booking fetched counts as new "
        "(expected on the first run only)"])
    assert out.startswith("pass: 1 booking(s) fetched, 1 registered")
    logged = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [entry["message"] for entry in logged if entry.get("event") == "summary"] == [out.splitlines()[0]]
    assert any(entry["message"].startswith("registered booking cs_1") for entry in logged)

    with cache_lock(sims.config.cache_path):
        code, out, err = await _cli("--log-file", str(log_file), "run", "--config", str(sims.config_path), "--date", DAY)
    assert (code, out) == (2, "")
    assert json.loads(log_file.read_text().splitlines()[-1])["message"] == messages(err)[-1].removeprefix("error: ")

    code, out, _ = await _cli("--version")
    assert code == 0 and re.fullmatch(r"libcal-passagepoint \S+\n", out)


def test_a_log_file_that_cannot_be_opened_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--log-file", str(tmp_path / "no" / "such.log")]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot open --log-file {tmp_path / 'no' / 'such.log'}: No such file or directory; nothing was done\n")
