"""The one configuration helper the tools share.

Each tool resolves its settings in one documented order: command line, then environment, then a
YAML file. This module holds the parts that are the same for all of them: reading the YAML file
with messages a person can act on, environment overrides, and secrets kept KMS-encrypted.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "load_yaml", "env_override", "kms_decrypt"]


class ConfigError(Exception):
    """A configuration problem the user has to fix; the message says what and where."""


def load_yaml(path: str | os.PathLike[str], *, required: bool = True) -> dict[str, Any]:
    """Read a YAML mapping from *path*; an absent optional file reads as ``{}``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        if not required:
            return {}
        raise ConfigError(
            f"configuration file {path} not found: create it (see the template in the README) "
            "or pass --config PATH"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"configuration file {path} is not valid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"configuration file {path} must hold a mapping of keys to values, "
            f"not a {type(data).__name__}"
        )
    return data


def env_override(
    config: Mapping[str, Any],
    mapping: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return a copy of *config* where each key in *mapping* takes its environment variable's value when set.

    *mapping* maps a configuration key to the name of the environment variable that overrides it.
    An empty variable counts as unset.
    """
    environ = os.environ if environ is None else environ
    merged = dict(config)
    for key, var in mapping.items():
        value = environ.get(var)
        if value:
            merged[key] = value
    return merged


def kms_decrypt(ciphertext_b64: str, *, region: str | None = None, name: str = "value") -> str:
    """Decrypt a base64 KMS ciphertext with boto3 and return the plaintext as text.

    boto3's own settings apply (credentials chain, ``AWS_ENDPOINT_URL_KMS``, …); *region* falls
    back to ``AWS_REGION``/``AWS_DEFAULT_REGION``. The plaintext never appears in an error message.
    """
    import boto3
    import botocore.exceptions

    try:
        blob = base64.b64decode("".join(ciphertext_b64.split()), validate=True)  # wrapped lines are fine
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{name} is not valid base64 KMS ciphertext") from exc
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise ConfigError(f"{name} is KMS-encrypted but AWS_REGION is not set: set it to the key's region")
    try:
        client = boto3.client("kms", region_name=region)
        response = client.decrypt(CiphertextBlob=blob)
    except botocore.exceptions.NoCredentialsError as exc:
        raise ConfigError(
            f"cannot decrypt {name}: no AWS credentials found (set AWS_PROFILE or the AWS_* "
            "variables, or run with an instance role)"
        ) from exc
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise ConfigError(
            f"cannot decrypt {name} with KMS in {region}: {error.get('Code', 'error')}: "
            f"{error.get('Message', '')}".rstrip(": ")
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError(f"cannot decrypt {name} with KMS in {region}: {exc}") from exc
    try:
        return response["Plaintext"].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name} decrypted, but the plaintext is not UTF-8 text") from exc
