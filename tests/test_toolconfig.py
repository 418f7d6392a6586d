"""The shared configuration helper: YAML errors, environment overrides, KMS secrets."""

from __future__ import annotations

import base64

import boto3
import pytest
from moto import mock_aws

from toolconfig import ConfigError, env_override, kms_decrypt, load_yaml


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


def test_env_override_takes_set_nonempty_variables():
    config = {"apikey": "from-file", "other": 1}
    merged = env_override(config, {"apikey": "ALMA_API_KEY", "other": "OTHER"}, {"ALMA_API_KEY": "env", "OTHER": ""})
    assert merged == {"apikey": "env", "other": 1}
    assert config["apikey"] == "from-file"


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
