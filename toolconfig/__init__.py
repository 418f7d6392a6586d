"""The one configuration helper the tools share.

Each tool resolves its settings in one documented order: command line, then environment, then a
YAML file. This module holds the parts that are the same for all of them: reading the YAML file
with messages a person can act on, secrets kept KMS-encrypted, declared settings (``settings``:
typed getters, environment overrides, unknown keys refused) and one logging setup (``logs``).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "add_logging_arguments", "load_yaml", "kms_decrypt", "refuse_unknown", "suggestion", "parse_duration",
           "format_duration"]


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
    import yaml  # here, not at import: the M2 Lambda's cold start reads no YAML unless ENVIRONMENT is set

    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
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


@functools.cache
def _unique_key_loader() -> type:
    """A SafeLoader that refuses a key given twice in one mapping (a second ``LCPP:`` appended at
    the end of a file would silently replace the first)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} appears twice: keep one (the second would replace the first)",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


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


def suggestion(name: str, known: Collection[str]) -> str | None:
    """The known name closest to *name* (case and ``_``/space ignored), if one is close enough."""
    def folded(text: str) -> str:
        return re.sub(r"[\s_-]+", "", text).casefold()

    by_folded = {folded(k): k for k in known}
    if folded(name) in by_folded:
        return by_folded[folded(name)]
    close = difflib.get_close_matches(folded(name), list(by_folded), n=1, cutoff=0.6)
    return by_folded[close[0]] if close else None


def refuse_unknown(section: Mapping[str, object], known: Collection[str], *, where: str, source: str,
                   what: str | None = None, elsewhere: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError for a key of *section* that is not in *known*, suggesting the closest.

    *where* is the section's name (``""`` for the top level), *source* the file, *what* the kind
    of key (default: "section" at the top level, else "setting"); a misspelt key must never be
    silently ignored (``Email:`` for ``Emails:`` would turn alerts off). *elsewhere* maps keys that
    belong to another section to that section, so the message can say where the key goes.
    """
    for key in section:
        if key in known:
            continue
        if elsewhere and elsewhere.get(key) and elsewhere[key] != where:
            raise ConfigError(f"{source}: {where}.{key} belongs in the {elsewhere[key]} section, not in {where}")
        name = f"{where}.{key}" if where else str(key)
        what = what or ("setting" if where else "section")
        close = suggestion(str(key), known)
        if close:
            hint = f"did you mean {f'{where}.' if where else ''}{close}?"
        else:
            hint = f"the known {what}s{f' of {where}' if where else ''} are {', '.join(sorted(map(str, known)))}"
        raise ConfigError(f"{source}: {name} is not a known {what}: {hint}")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def format_duration(seconds: float) -> str:
    """*seconds* written the way parse_duration reads it: ``30d``, ``12h``, ``90m``, ``45s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_duration(text: str, *, bare: str | None = None, name: str = "duration") -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``.

    A number without a unit means *bare* (a unit letter); with *bare* None it is refused, since
    guessing wrong deletes the wrong records ("30" meant seconds to one reader and days to another).
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text or ""))
    if not match:
        raise ConfigError(f"{name} {str(text)[:40]!r} is not a duration: use e.g. 30d, 12h, 90m, 45s or 2w")
    unit = match.group(2) or bare
    if unit is None:
        raise ConfigError(f"{name} {match.group(1)} has no unit: write {match.group(1)}d for days, "
                          f"{match.group(1)}h for hours or {match.group(1)}w for weeks")
    return float(match.group(1)) * _UNITS[unit]


def release() -> str:
    """This project's version, for --version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("library-systems-tools")
    except PackageNotFoundError:  # pragma: no cover - a checkout that was not installed
        return "unknown"


def add_logging_arguments(parser: Any) -> None:
    """``--version``, ``--quiet``, ``--verbose`` and ``--log-file``: the options every command has."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {release()}")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors (no progress)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug messages too")
    parser.add_argument("--log-file", metavar="PATH",
                        help="also append the log, one JSON object per line, to PATH (logrotate may move it)")
