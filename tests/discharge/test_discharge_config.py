"""loan_discharge.config: the original tool's file works, new keys have defaults, bad values are named
in toolconfig's words ("file: key must …")."""

from __future__ import annotations

from pathlib import Path

import pytest

from loan_discharge.config import ConfigError, default_concurrency, load_config

ORIGINAL = """\
apikey: file-key
loans_data_file: ./loans.csv
circ_desks_file: ./desks.csv
data_dir: ./data
location_type: temp
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "loan_discharge_config.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_original_tool_configuration_loads_unchanged(tmp_path: Path) -> None:
    """The five keys of the original tool are all it needs; paths resolve next to the file."""
    config = load_config(write(tmp_path, ORIGINAL), environ={})
    assert config.apikey == "file-key"
    assert config.loans_data_file == tmp_path / "loans.csv"
    assert config.circ_desks_file == tmp_path / "desks.csv"
    assert config.data_dir == tmp_path / "data"
    assert config.location_type == "temp"
    assert config.base_url == "https://api-na.hosted.exlibrisgroup.com"
    assert (config.rate_limit, config.batch_size, config.daily_quota_floor) == (25, 1000, 0)
    assert config.concurrency == 30


def test_environment_key_overrides_file_and_repr_hides_it(tmp_path: Path) -> None:
    """ALMA_API_KEY wins over apikey; the key never shows in the config's repr."""
    config = load_config(write(tmp_path, ORIGINAL), environ={"ALMA_API_KEY": "env-key"})
    assert config.apikey == "env-key"
    assert "env-key" not in repr(config)


def test_new_keys_and_defaults(tmp_path: Path) -> None:
    """location_type defaults to auto; concurrency follows rate_limit unless set; /almaws/v1 is accepted."""
    text = (
        "loans_data_file: l.csv\ncirc_desks_file: d.csv\ndata_dir: out\n"
        "base_url: https://api-eu.hosted.exlibrisgroup.com/almaws/v1/\nrate_limit: 10\n"
        "batch_size: 50\ndaily_quota_floor: 5000\n"
    )
    config = load_config(write(tmp_path, text), environ={}, need_key=False)
    assert config.apikey is None
    assert config.location_type == "auto"
    assert config.base_url == "https://api-eu.hosted.exlibrisgroup.com"
    assert config.concurrency == default_concurrency(10) == 12
    assert (config.batch_size, config.daily_quota_floor) == (50, 5000)


BASE = "loans_data_file: l.csv\ncirc_desks_file: d.csv\ndata_dir: out\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("location_type: both\n", "location_type must be one of auto, temp, perm, not 'both'"),
        ("rate_limit: 0\n", "rate_limit must be at least 1, not 0"),
        ("rate_limit: fast\n", "rate_limit must be a whole number, not 'fast'"),
        ("rate_limit: true\n", "rate_limit must be a whole number, not True"),
        ("concurrency: 2.5\n", "concurrency must be a whole number, not 2.5"),
        ("batch_size: 0\n", "batch_size must be at least 1, not 0"),
        ("max_attempts: 0\n", "max_attempts must be at least 1, not 0"),
        ("daily_quota_floor: -1\n", "daily_quota_floor must be at least 0, not -1"),
        ("request_timeout: 0\n", "request_timeout must be more than 0, not 0"),
        ("request_timeout: soon\n", "request_timeout must be a number, not 'soon'"),
        ("base_url: api-na.hosted.exlibrisgroup.com\n",
         "base_url must be the region's API host, e.g. https://api-na.hosted.exlibrisgroup.com or "
         "https://api-eu.hosted.exlibrisgroup.com, not 'api-na.hosted.exlibrisgroup.com'"),
        ("ratelimit: 5\n", "ratelimit is not a known setting: did you mean rate_limit?"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, extra: str, message: str) -> None:
    """Each bad value is refused with the file, the key and what to write instead."""
    path = write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={}, need_key=False)
    assert str(caught.value) == f"{path}: {message}"


def test_loans_data_file_is_needed_only_by_a_csv_run(tmp_path: Path) -> None:
    """A configuration for barcode or Analytics runs may leave loans_data_file out; a CSV run asks for it."""
    text = "".join(line + "\n" for line in BASE.splitlines() if not line.startswith("loans_data_file"))
    config = load_config(write(tmp_path, text), environ={"ALMA_API_KEY": "env-key"})
    assert config.loans_data_file is None
    with pytest.raises(ConfigError, match="loans_data_file is missing: add it .*--barcodes FILE, or --analytics-report"):
        _ = config.items_file
    with_report = load_config(write(tmp_path, text + "analytics_report: /shared/U/Reports/items to discharge\n"),
                              environ={"ALMA_API_KEY": "env-key"})
    assert with_report.analytics_report == "/shared/U/Reports/items to discharge"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("analytics_report: Reports/items\n", "analytics_report must be the report's catalog path, starting with "
                                               "/shared/ or /users/, not 'Reports/items'"),
        ("analytics_report: /shared/U/Reports/items\n", "analytics_report and loans_data_file are both set: keep "
                                                        "the one that names where the items come from"),
    ],
)
def test_a_bad_analytics_report_is_refused(tmp_path: Path, extra: str, message: str) -> None:
    path = write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"ALMA_API_KEY": "env-key"})
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize("key", ["circ_desks_file", "data_dir"])
def test_missing_path_key(tmp_path: Path, key: str) -> None:
    """A missing file key is named, with where to look."""
    text = "".join(line + "\n" for line in BASE.splitlines() if not line.startswith(key))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"ALMA_API_KEY": "env-key"})
    assert str(caught.value) == f"{path}: {key} is missing: add it (see loan_discharge_config.template.yml)"


def test_the_key_may_be_missing_only_when_none_is_needed(tmp_path: Path) -> None:
    """No apikey and no ALMA_API_KEY: a run that sends (need_key) is refused, saying where a key
    goes; a dry run loads without one. An empty ALMA_API_KEY counts as unset."""
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"ALMA_API_KEY": ""})
    assert str(caught.value) == (
        f"{path}: apikey is missing (set it in the file or in the environment variable ALMA_API_KEY)"
    )
    assert load_config(path, environ={}, need_key=False).apikey is None
    assert load_config(path, environ={"ALMA_API_KEY": "env-key"}, need_key=False).apikey == "env-key"


def test_paths_are_taken_from_the_configuration_files_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (and ~) resolve beside the configuration file, whatever the working directory."""
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", "loans_data_file: loans.csv\ncirc_desks_file: ~/desks.csv\ndata_dir: /srv/data\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_config(Path("etc") / path.name, environ={}, need_key=False)
    assert config.loans_data_file == tmp_path / "etc" / "loans.csv"
    assert config.circ_desks_file == tmp_path / "home" / "desks.csv"
    assert config.data_dir == Path("/srv/data")


def test_missing_file(tmp_path: Path) -> None:
    """A missing configuration file says how to provide one."""
    with pytest.raises(ConfigError, match="not found: create it"):
        load_config(tmp_path / "nope.yml", environ={})
