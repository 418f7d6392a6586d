"""write_csv_to_redis and `m2-code-store lookup` as users run them: exit statuses, messages, summary, dry run."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from logtext import messages

from m2_code_store.cli import main as m2_code_store
from m2_code_store.store import CodeStore
from m2_code_store.write_csv_to_redis import main
from simulators.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
HEADER = "Item barcode,Accession date,Customer code,Delete date\n"
SUMMARY = re.compile(
    r"^read (?P<read>[\d,]+) rows: (?P<written>[\d,]+) written, (?P<deleted>[\d,]+) deleted \((?P<removed>[\d,]+) removed "
    r"from the store\), (?P<skipped>[\d,]+) skipped; (?P<records>[\d,]+) records in the store; [\d.]+ s, [\d,]+ rows/s; "
    r"store: (?P<store>.+)$"
)


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text(HEADER + "1,2024-01-01,NA,\n2,2024-01-01,NB,\n3,2024-01-01,,2024-03-01\n")
    return path


@pytest.fixture
def env(monkeypatch, redis_url):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("REDIS_ENDPOINT_ENCRYPTED", raising=False)


def test_load_prints_summary_and_exits_0(csv_file, env, redis_url, redis_client, capsys):
    assert main([str(csv_file), "10000", "--quiet"]) == 0
    out = capsys.readouterr().out.strip()
    match = SUMMARY.match(out)
    assert match, out
    assert match.group("read", "written", "deleted", "removed", "skipped", "records") == ("3", "2", "1", "0", "0", "2")
    assert match.group("store") == redis_url  # every summary names the store it used
    assert CodeStore(redis_client).lookup(["1", "2", "3"]) == ["NA", "NB", None]


def test_a_file_loaded_again_says_its_rows_were_not_sent(csv_file, env, capsys):
    assert main([str(csv_file), "10000", "--quiet"]) == 0
    capsys.readouterr()
    assert main([str(csv_file), "10000"]) == 0
    captured = capsys.readouterr()
    assert ", 0 skipped; 3 rows not sent (the store held what they say); 2 records in the store;" in captured.out
    assert ("loading: 3 of the file's 3 rows not sent: their buckets already held exactly what the file leaves "
            "in them") in messages(captured.err)
    assert "rows sent (" not in captured.err


def test_skipped_rows_are_listed_and_exit_status_is_1(tmp_path, env, redis_client, capsys):
    path = tmp_path / "items.csv"
    path.write_text(HEADER + "1,2024-01-01,NA,\n,2024-01-01,NB,\n4,2024-01-01\n5,2024-01-01,NC,\n")
    assert main([str(path), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert messages(captured.err) == [
        "warning: skipped items.csv line 3: blank barcode",
        "warning: skipped items.csv line 4: wrong number of fields (2, expected 4)",
    ]
    assert SUMMARY.match(captured.out.strip()).group("written", "skipped") == ("2", "2")
    assert CodeStore(redis_client).lookup(["1", "5"]) == ["NA", "NC"]


def test_many_skipped_rows_are_written_to_a_listing(tmp_path, env, capsys):
    path = tmp_path / "items.csv"
    path.write_text(HEADER + "".join(",2024-01-01,NB,\n" for _ in range(25)))
    assert main([str(path), "--quiet"]) == 1
    err = messages(capsys.readouterr().err)
    assert f"warning: … and 5 more skipped rows: all 25 are listed in {path}.skipped.txt" in err
    assert (tmp_path / "items.csv.skipped.txt").read_text().splitlines()[-1] == "line 26: blank barcode"


def test_missing_column_is_refused_before_anything_is_written(tmp_path, env, redis_client, capsys):
    path = tmp_path / "items.csv"
    path.write_text("Item barcode,Customer code\n1,NA\n")
    assert main([str(path)]) == 2
    assert messages(capsys.readouterr().err) == [
        "error: column 'Delete date' not found in items.csv (found: 'Item barcode', 'Customer code'): "
        "is this the LAS 'Barcodes by CUS/DATE' export?"
    ]
    assert redis_client.keys("*") == []


def test_dry_run_never_connects(csv_file, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there: a connect would fail
    assert main([str(csv_file), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dry run, nothing written: 2 rows would be written and 1 deleted; 0 rows repeat a barcode (the row with the latest date wins)"
    assert out[1].startswith("read 3 rows: 0 written, 0 deleted, 0 skipped; ")


def test_unreachable_store_is_reported_without_the_password(csv_file, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    assert main([str(csv_file), "--quiet"]) == 2
    raw = capsys.readouterr().err
    (err,) = messages(raw)
    assert err.startswith("error: cannot reach redis://:***@127.0.0.1:1/0: ")
    assert err.endswith("Nothing was written.")
    assert "hunter2" not in raw


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x.csv", "0"], "BATCHSIZE must be a positive whole number (got 0)"),
        (["x.csv", "ten"], "argument batch_size: invalid int value: 'ten'"),
        (["x.csv", "--force"], "--force only makes sense with --replace"),
        (["x.csv", "--replace", "--max-shrink", "2"], "--max-shrink must be between 0 and 1 (got 2.0)"),
    ],
)
def test_bad_usage_exits_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_refused_replace_exits_2_and_keeps_the_data(tmp_path, env, redis_client, capsys):
    big = tmp_path / "big.csv"
    big.write_text(HEADER + "".join(f"{i},2024-01-01,NA,\n" for i in range(50)))
    assert main([str(big), "--quiet"]) == 0
    small = tmp_path / "small.csv"
    small.write_text(HEADER + "1,2024-01-01,NB,\n")
    assert main([str(small), "--replace", "--quiet"]) == 2
    assert "Re-run with --force to replace anyway." in capsys.readouterr().err
    assert CodeStore(redis_client).lookup(["1", "49"]) == ["NA", "NA"]


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "m2_code_store/write_csv_to_redis.py"],
        [sys.executable, "-m", "m2_code_store.write_csv_to_redis"],
        [str(Path(sys.executable).parent / "write_csv_to_redis")],
        [sys.executable, "-m", "m2_code_store", "load"],
    ],
    ids=["file", "module", "console-script", "m2-code-store-load"],
)
def test_every_documented_way_to_run_the_loader_works(command, csv_file, redis_url):
    env = {**os.environ, "REDIS_URL": redis_url}
    done = subprocess.run([*command, str(csv_file), "10000"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert SUMMARY.match(done.stdout.strip())
    assert "loading: 3 of 3 rows sent (100%)" in messages(done.stderr)  # progress lines when not on a terminal


def test_outgrown_buckets_are_rebuilt_and_said_so(tmp_path, env, redis_client, capsys):
    first = tmp_path / "first.csv"
    first.write_text(HEADER + "1,2024-01-01,NA,\n")
    assert main([str(first), "--quiet"]) == 0  # a new store: 1024 buckets
    grown = tmp_path / "grown.csv"
    grown.write_text(HEADER + "".join(f"{i},2024-01-01,NA,\n" for i in range(100_000, 200_000)))
    assert main([str(grown)]) == 0
    assert ("the store had outgrown its buckets, so this load rebuilt it into 4,096 buckets (memory per record "
            "stays low)") in messages(capsys.readouterr().err)
    assert CodeStore(redis_client).lookup(["1", "150000"]) == ["NA", "NA"]


def test_failed_load_reports_the_error_and_a_summary(tmp_path, env, redis_client, capsys):
    redis_client.config_set("maxmemory", str(redis_client.info("memory")["used_memory"] + 200_000))
    try:
        big = tmp_path / "big.csv"
        big.write_text(HEADER + "".join(f"{i},2024-01-01,NA,\n" for i in range(100_000, 160_000)))
        assert main([str(big), "--quiet"]) == 1
    finally:
        redis_client.config_set("maxmemory", "0")
    captured = capsys.readouterr()
    (err,) = messages(captured.err)
    assert err.startswith("error: Redis failed during the load (BulkWriteError: Redis refused ")
    assert "OOM command not allowed" in err
    assert err.endswith("the new data set was not switched in: the store is still empty; the partial new data set "
                        "was deleted. Re-running the same command is safe.")
    assert captured.out.startswith("read 60,000 rows: 0 written, 0 deleted, 0 skipped; ")  # a first load: none of it live
    assert main([str(big), "--quiet"]) == 0
    assert SUMMARY.match(capsys.readouterr().out.strip()).group("records") == "60,000"


def _env_without_store(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_ENDPOINT_ENCRYPTED", "M2_STORE")}
    return {**env, **extra}


COMMANDS = {
    "write_csv_to_redis": [str(Path(sys.executable).parent / "write_csv_to_redis"), "{csv}"],
    "load": [sys.executable, "-m", "m2_code_store", "load", "{csv}"],
    "serve": [sys.executable, "-m", "m2_code_store", "serve", "--port", "{port}"],
    "stats": [sys.executable, "-m", "m2_code_store", "stats"],
    "lookup": [sys.executable, "-m", "m2_code_store", "lookup", "33433012345678"],
}


@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_malformed_redis_url_is_one_line_and_exit_2_for_every_command(command, csv_file, tmp_path):
    """redis://:pw@[::1/5 once gave a traceback and exit 1; now one line, the password never shown."""
    argv = [arg.format(csv=csv_file, port=free_port()) for arg in COMMANDS[command]]
    env = _env_without_store(REDIS_URL="redis://:s3cret@[::1/5")
    done = subprocess.run(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    errors = [line for line in messages(done.stderr) if not line.startswith("warning: skipped")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: REDIS_URL has an unclosed '[' (a bracketed IPv6 address): expected redis://[:password@]host[:port][/db]")
    assert "s3cret" not in done.stderr + done.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_a_job_without_a_terminal_never_falls_back_to_the_embedded_store(command, csv_file, tmp_path):
    """A cron job that lost REDIS_URL must fail (exit 2, naming the settings), not fill a local store."""
    argv = [arg.format(csv=csv_file, port=free_port()) for arg in COMMANDS[command]]
    data_dir = tmp_path / "m2-data"
    done = subprocess.run(argv, cwd=tmp_path, env=_env_without_store(M2_DATA_DIR=str(data_dir)),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "no store configured: set REDIS_URL (redis://host:port/db) or REDIS_ENDPOINT_ENCRYPTED" in done.stderr
    assert "set M2_STORE=embedded" in done.stderr
    assert not data_dir.exists()


def test_at_a_terminal_the_embedded_store_is_announced_and_named_in_the_summary(csv_file, tmp_path):
    import pty

    from m2_code_store.embedded import stop_local_server

    data_dir = tmp_path / "m2-data"
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "m2_code_store.write_csv_to_redis", str(csv_file), "--quiet"],
                              cwd=ROOT, env=_env_without_store(M2_DATA_DIR=str(data_dir)), stdin=terminal,
                              capture_output=True, text=True, timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
        stop_local_server(data_dir)
    assert done.returncode == 0, done.stderr
    assert messages(done.stderr) == [
        f"warning: REDIS_URL and REDIS_ENDPOINT_ENCRYPTED are not set: using the embedded local "
        f"Redis in {data_dir} (set M2_STORE=embedded to choose it explicitly)"]
    assert SUMMARY.match(done.stdout.strip()).group("store") == f"the embedded local Redis in {data_dir}"


def test_on_a_terminal_the_log_is_readable_lines_and_a_log_file_gets_json(csv_file, redis_url, tmp_path):
    """stderr a terminal: 'HH:MM:SS warning: …' lines and the summary once (on stdout); --log-file:
    the same events as JSON objects, the summary included, for cron users who want a file."""
    import json
    import pty

    log_file = tmp_path / "loader.log"
    csv_file.write_text(csv_file.read_text() + ",2024-01-01,NB,\n")  # one bad row: a warning
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "m2_code_store.write_csv_to_redis", str(csv_file), "--quiet",
                               "--log-file", str(log_file)],
                              cwd=ROOT, env={**os.environ, "REDIS_URL": redis_url}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=60)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 1
    lines = shown.decode().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"\d\d:\d\d:\d\d warning: skipped items.csv line 5: blank barcode", lines[0])
    assert SUMMARY.match(done.stdout.strip())
    logged = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [entry["level"] for entry in logged] == ["warning", "info"]
    assert logged[1]["event"] == "summary" and logged[1]["message"] == done.stdout.strip()


@pytest.mark.parametrize("command", [["write_csv_to_redis"], ["m2-code-store"]])
def test_every_command_says_its_version(command):
    done = subprocess.run([str(Path(sys.executable).parent / command[0]), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and re.fullmatch(rf"{command[0]} \d+\.\d+\.\d+\n", done.stdout)


# --- m2-code-store lookup ---------------------------------------------------------------------------

@pytest.fixture
def loaded(tmp_path, env):
    """The store holds two records."""
    path = tmp_path / "loaded.csv"
    path.write_text(HEADER + "33433012345678,2024-01-01,NA,\n1234,2024-01-01,NB,\n")
    assert main([str(path), "--quiet"]) == 0


def test_lookup_prints_each_barcode_and_its_code_and_exits_0_when_all_are_found(loaded, capsys):
    assert m2_code_store(["lookup", "33433012345678", "1234"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "33433012345678  NA\n1234            NB\n"
    assert captured.err == ""


def test_lookup_says_not_found_and_exits_1_when_some_are_unknown(loaded, redis_url, capsys):
    """Barcodes are read as the API reads them (a comma list counts, each barcode once)."""
    assert m2_code_store(["lookup", "1234,39999999", "1234"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "1234      NB\n39999999  not found\n"
    assert messages(captured.err) == [f"warning: 1 of 2 barcodes not found in {redis_url}"]


def test_lookup_in_a_store_with_no_data_set_says_so_and_exits_1(env, redis_url, capsys):
    assert m2_code_store(["lookup", "1234"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "1234  not found\n"
    assert messages(captured.err) == [f"warning: {redis_url} holds no data set: load an export with m2-code-store load"]


@pytest.mark.parametrize(("barcodes", "message"), [
    (["12 34"], "barcode '12 34' has characters outside A-Z, a-z, 0-9, '.', '_' and '-'"),
    (["1234,,5678"], "barcode 2 of 3 is empty (two commas in a row, or a trailing comma?)"),
    (["x" * 49], f"barcode '{'x' * 40}'… (49 characters) is longer than 48 characters"),
], ids=["space", "empty", "too-long"])
def test_lookup_of_a_malformed_barcode_exits_2_without_reaching_the_store(barcodes, message, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there: a connect would fail
    assert m2_code_store(["lookup", *barcodes]) == 2
    assert messages(capsys.readouterr().err) == [f"error: {message}"]


@pytest.mark.parametrize("command", [["stats"], ["lookup", "1234"]])
def test_lookup_and_stats_report_an_unreachable_store_alike_and_exit_2(command, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    monkeypatch.delenv("REDIS_ENDPOINT_ENCRYPTED", raising=False)
    assert m2_code_store(command) == 2
    captured = capsys.readouterr()
    (err,) = messages(captured.err)
    assert err.startswith("error: cannot reach redis://:***@127.0.0.1:1/0: ")
    assert captured.out == "" and "hunter2" not in captured.err


def test_progress_says_each_tenth_once_even_when_the_same_count_comes_again(caplog):
    """On a cluster every primary's stream reports the running total: a count already said is not
    logged again (the 100% line came once per primary)."""
    import io
    import logging

    from m2_code_store.progress import Progress

    progress = Progress(100, stream=io.StringIO())  # not a terminal: log lines
    with caplog.at_level(logging.INFO, logger="m2_code_store"):
        for done in (5, 10, 10, 50, 100, 100, 100):
            progress.update(done)
    assert [r.getMessage() for r in caplog.records] == [
        "loading: 10 of 100 rows sent (10%)", "loading: 50 of 100 rows sent (50%)", "loading: 100 of 100 rows sent (100%)"]


# --- Ctrl-C while a command starts -----------------------------------------------------------------

INTERRUPTED = {command: f"error: {command}: interrupted while starting, before it did anything"
               for command in ("write_csv_to_redis", "m2-code-store")}


@pytest.mark.parametrize(("command", "code"), [
    # the command's imports: the handler itself imports nothing (not json, not yaml through toolconfig),
    # since the interrupted import may have left any of them half-imported
    ("write_csv_to_redis", "import sys; sys.path.insert(0, sys.argv[1]); from m2_code_store.__main__ import _starting; "
                           "sys.modules.update(json=None, yaml=None, toolconfig=None, logging=None); "
                           "_starting('write_csv_to_redis', lambda: __import__('slow_to_import'))"),
    # reading the arguments, after the imports
    ("write_csv_to_redis", "import m2_code_store.write_csv_to_redis as loader; from m2_code_store import __main__; "
                           "loader.parse_args = lambda argv: (_ for _ in ()).throw(KeyboardInterrupt()); "
                           "__main__.write_csv_to_redis()"),
    ("m2-code-store", "import m2_code_store.cli as cli; from m2_code_store import __main__; "
                      "cli.command = lambda argv: (_ for _ in ()).throw(KeyboardInterrupt()); __main__.main()"),
], ids=["import", "loader-arguments", "m2-code-store-arguments"])
def test_a_ctrl_c_while_a_command_starts_is_one_line_and_status_130(tmp_path, command, code):
    (tmp_path / "slow_to_import.py").write_text("raise KeyboardInterrupt\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 130
    assert messages(done.stderr) == [INTERRUPTED[command]]
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("command", ["write_csv_to_redis", "m2-code-store"])
def test_ctrl_c_while_the_command_imports_its_modules_is_one_line_not_a_traceback(tmp_path, command):
    """The signal is sent once the process has loaded hiredis (redis' first import): the loader's
    modules take a few tenths of a second more to import."""
    argv = [str(Path(sys.executable).parent / command), *(["load"] if command == "m2-code-store" else []),
            str(tmp_path / "export.csv")]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        deadline = time.monotonic() + 30
        while "hiredis" not in Path(f"/proc/{process.pid}/maps").read_text() and time.monotonic() < deadline:
            time.sleep(0.001)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert messages(err) == [INTERRUPTED[command]]
    assert "Traceback" not in err and out == ""


def test_ctrl_c_while_lookup_waits_on_a_store_that_does_not_answer_is_one_line_and_status_130(tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(60)
        process = subprocess.Popen([str(Path(sys.executable).parent / "m2-code-store"), "lookup", "33433012345678"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"})
        try:
            connection, _ = silent.accept()  # lookup has started and connected: it now waits for the answer
            time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
            connection.close()
        finally:
            process.kill()
    assert process.returncode == 130, err
    assert messages(err) == ["error: m2-code-store: interrupted"]
    assert "Traceback" not in err and out == ""
