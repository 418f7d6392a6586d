"""The shared configuration helper: YAML errors, environment overrides, KMS secrets."""

from __future__ import annotations

import base64
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from toolconfig import ConfigError, kms_decrypt, load_yaml


def test_missing_required_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"configuration file .*nope.yml not found: create it"):
        load_yaml(tmp_path / "nope.yml")


def test_missing_optional_file_reads_empty(tmp_path):
    assert load_yaml(tmp_path / "nope.yml", required=False) == {}


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("a: 1\nb: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_yaml(path)


def test_non_mapping_refused(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of keys to values, not a list"):
        load_yaml(path)


def test_bom_tolerated(tmp_path):
    path = tmp_path / "c.yml"
    path.write_bytes(b"\xef\xbb\xbfapikey: abc\n")
    assert load_yaml(path) == {"apikey": "abc"}


@mock_aws
def test_kms_round_trip(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    kms = boto3.client("kms", region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"secret-host:6379")["CiphertextBlob"]
    assert kms_decrypt(base64.b64encode(blob).decode(), region="us-east-1") == "secret-host:6379"


def test_kms_rejects_non_base64_without_echoing_it():
    with pytest.raises(ConfigError) as info:
        kms_decrypt("not base64 !!!", region="us-east-1", name="REDIS_ENDPOINT_ENCRYPTED")
    assert str(info.value) == "REDIS_ENDPOINT_ENCRYPTED is not valid base64 KMS ciphertext"


def test_kms_needs_a_region(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigError, match="AWS_REGION is not set"):
        kms_decrypt(base64.b64encode(b"x").decode(), name="REDIS_ENDPOINT_ENCRYPTED")


@mock_aws
def test_kms_accepts_line_wrapped_base64(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    kms = boto3.client("kms", region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    text = base64.encodebytes(kms.encrypt(KeyId=key_id, Plaintext=b"host:6379")["CiphertextBlob"]).decode()
    assert "\n" in text.strip()  # as the base64 command wraps it
    assert kms_decrypt(text, region="us-east-1") == "host:6379"


@pytest.mark.parametrize(
    ("section", "where", "message"),
    [
        ({"Email": {}}, "", "c.yml: Email is not a known section: did you mean Emails?"),
        ({"concurency": 16}, "LCPP", "c.yml: LCPP.concurency is not a known setting: did you mean LCPP.concurrency?"),
        ({"CONCURRENCY": 16}, "LCPP", "c.yml: LCPP.CONCURRENCY is not a known setting: did you mean LCPP.concurrency?"),
        ({"zzz": 1}, "LCPP", "c.yml: LCPP.zzz is not a known setting: the known settings of LCPP are concurrency, interval"),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_known_one(section, where, message):
    from toolconfig import refuse_unknown

    known = ["Emails", "LibCal"] if not where else ["interval", "concurrency"]
    with pytest.raises(ConfigError) as info:
        refuse_unknown(section, known, where=where, source="c.yml")
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "bare", "seconds"),
    [("30d", None, 30 * 86400), ("12h", None, 43200), ("90m", None, 5400), ("2w", None, 14 * 86400),
     ("1.5h", None, 5400), ("300", "s", 300)],
)
def test_durations_carry_their_unit(text, bare, seconds):
    from toolconfig import parse_duration

    assert parse_duration(text, bare=bare) == seconds


def test_a_duration_without_a_unit_is_refused_unless_the_caller_says_what_it_means():
    """'purge --older-than 30' once meant 30 seconds and deleted yesterday's records."""
    from toolconfig import parse_duration

    with pytest.raises(ConfigError) as info:
        parse_duration("30", name="--older-than")
    assert str(info.value) == "--older-than 30 has no unit: write 30d for days, 30h for hours or 30w for weeks"


@pytest.mark.parametrize(
    ("values", "read", "message"),
    [
        ({"interval": 0}, lambda s: s.integer("interval", minimum=1), "c.yml: LCPP.interval must be at least 1, not 0"),
        ({"interval": "soon"}, lambda s: s.integer("interval", default=300), "c.yml: LCPP.interval must be a whole number, not 'soon'"),
        ({"interval": True}, lambda s: s.integer("interval", default=300), "c.yml: LCPP.interval must be a whole number, not True"),
        ({}, lambda s: s.text("name"), "c.yml: LCPP.name is missing"),
        ({"timeout": 0}, lambda s: s.number("timeout", above=0), "c.yml: LCPP.timeout must be more than 0, not 0"),
        ({"check": "maybe"}, lambda s: s.boolean("check", default=True), "c.yml: LCPP.check must be true or false"),
        ({"mode": "both"}, lambda s: s.choice("mode", ("auto", "temp"), default="auto"),
         "c.yml: LCPP.mode must be one of auto, temp, not 'both'"),
        ({"root": "pp.example.edu"}, lambda s: s.url("root"), "c.yml: LCPP.root must be an http(s) URL, not 'pp.example.edu'"),
        ({"retention": "30"}, lambda s: s.duration("retention", default="30d", minimum=86400),
         "c.yml: LCPP.retention 30 has no unit: write 30d for days, 30h for hours or 30w for weeks"),
        ({"retention": "2h"}, lambda s: s.duration("retention", default="30d", minimum=86400),
         "c.yml: LCPP.retention must be at least 1d, not 2h"),
        ({}, lambda s: s.secret("password", "PP_PASSWORD"),
         "c.yml: LCPP.password is missing (set it in the file or in the environment variable PP_PASSWORD)"),
    ],
)
def test_each_getter_names_the_file_and_the_key_and_what_to_write(values, read, message):
    from toolconfig.settings import Section

    with pytest.raises(ConfigError) as info:
        read(Section(values, name="LCPP", source="c.yml", environ={}))
    assert str(info.value) == message


def test_getters_read_what_is_right(tmp_path):
    from toolconfig.settings import Section

    config = tmp_path / "etc" / "c.yml"
    section = Section({"n": "12", "t": " x ", "p": "data", "a": "/abs", "s": "'sp '", "l": "a, b"}, source=config,
                      environ={"S": ""}, known=["n", "t", "p", "a", "s", "l"])
    assert section.integer("n") == 12 and section.text("t") == "x"
    assert section.file_path("p") == tmp_path / "etc" / "data"  # beside the file, not the working directory
    assert section.file_path("a") == Path("/abs")
    assert section.secret("s", "S") == "'sp '"  # an empty variable counts as unset; the file's value as written
    assert section.text_list("l") == ["a", "b"]
    with pytest.raises(ConfigError, match=r"^.*c.yml: nn is not a known setting: did you mean n\?$"):
        Section({"nn": 1}, source=config, known=["n"])


def test_a_secret_from_a_file_with_windows_line_ends_loses_its_line_end_and_a_control_character_is_refused():
    """`ALMA_API_KEY="$(cat key.txt)"` keeps the \r of a key file saved on Windows: it is not part of
    the key (it once crashed the run in aiohttp's header check). A control character inside is refused."""
    from toolconfig.settings import Section

    assert Section({}, name="A", source="c.yml", environ={"K": "l7xx1234\r"}).secret("apikey", "K") == "l7xx1234"
    assert Section({}, name="A", source="c.yml", environ={"K": "\r\nl7xx1234\r\n"}).secret("apikey", "K") == "l7xx1234"
    with pytest.raises(ConfigError) as info:
        Section({}, name="A", source="c.yml", environ={"K": "l7xx\t1234"}).secret("apikey", "K")
    assert str(info.value) == ("the environment variable K holds a control character (a line break or tab inside "
                               "the value?): set it to the secret alone")
    with pytest.raises(ConfigError, match=r"^c\.yml: A\.apikey holds a control character"):
        Section({"apikey": "l7xx\n1234"}, name="A", source="c.yml", environ={}).secret("apikey", "K")
