"""loan_discharge.config: the original tool's file works, new keys have defaults, bad values are named."""

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
    config = load_config(write(tmp_path, text), environ={})
    assert config.apikey is None
    assert config.location_type == "auto"
    assert config.base_url == "https://api-eu.hosted.exlibrisgroup.com"
    assert config.concurrency == default_concurrency(10) == 12
    assert (config.batch_size, config.daily_quota_floor) == (50, 5000)


BASE = "loans_data_file: l.csv\ncirc_desks_file: d.csv\ndata_dir: out\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("location_type: both\n", "location_type is 'both': use one of auto, temp, perm"),
        ("rate_limit: 0\n", "rate_limit is 0: use a whole number >= 1"),
        ("rate_limit: fast\n", "rate_limit is 'fast': use a whole number >= 1"),
        ("concurrency: 2.5\n", "concurrency is 2.5: use a whole number >= 1"),
        ("daily_quota_floor: -1\n", "daily_quota_floor is -1: use a whole number >= 0"),
        ("request_timeout: 0\n", "request_timeout is 0: use a number of seconds > 0"),
        ("base_url: api-na.hosted.exlibrisgroup.com\n", "base_url is 'api-na.hosted.exlibrisgroup.com': use the region's API host"),
        ("ratelimit: 5\n", "ratelimit is not a known setting: did you mean rate_limit?"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, extra: str, message: str) -> None:
    """Each bad value is refused with the file, the key and what to use instead."""
    path = write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize("key", ["loans_data_file", "circ_desks_file", "data_dir"])
def test_missing_path_key(tmp_path: Path, key: str) -> None:
    """A missing file key is named, with where to look."""
    text = "".join(line + "\n" for line in BASE.splitlines() if not line.startswith(key))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == f"{path}: key '{key}' is missing: add it (see loan_discharge_config.template.yml)"


def test_missing_file(tmp_path: Path) -> None:
    """A missing configuration file says how to provide one."""
    with pytest.raises(ConfigError, match="not found: create it"):
        load_config(tmp_path / "nope.yml", environ={})
