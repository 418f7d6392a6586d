"""GET /api/v0.1/docs (Swagger UI from a package, no CDN), the OpenAPI description's truth about
the API (validated, matched against the barcode rules, fuzzed by schemathesis against the real
app on a real Redis), and 405 answers with Allow."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import jsonschema
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

import m2_code_store
from m2_code_store import docs
from m2_code_store.api import MAX_QUERY_BYTES, UNAVAILABLE, _max_barcodes, create_app
from m2_code_store.config import StoreTarget
from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from m2_code_store.rules import BARCODE_PATTERN, MAX_BARCODE_LENGTH
from simulators.redis_server import free_port

SPEC_PATH = Path(m2_code_store.__file__).parent / "openapi.json"
LOOKUP_PATHS = ["/api/v0.1/m2-customer-code", "/api/v0.1/m2-customer-codes"]
HEADER = "Item barcode,Accession date,Customer code,Delete date\n"
ONE_YEAR = 365 * 24 * 3600


def store_with_records(redis_url: str, tmp_path: Path) -> StoreTarget:
    """A real Redis holding a few records, among them the description's example barcode."""
    export = tmp_path / "items.csv"
    export.write_text(HEADER + "33433077906331,,NX,\n1234,,NA,\n5678,,QQ,\n")
    load(redis.Redis.from_url(redis_url), read_export(export))
    return StoreTarget(redis_url, "REDIS_URL")


@pytest.fixture
def http(redis_url, tmp_path):
    return create_app({"STORE_TARGET": store_with_records(redis_url, tmp_path)}).test_client()


def envelope_message(response) -> str:
    body = response.get_json()
    assert response.mimetype == "application/json"
    assert body["statusCode"] == response.status_code == body["body"]["status"]
    return body["body"]["message"]


# --- the page ---------------------------------------------------------------------------------

def test_the_page_loads_swagger_ui_and_the_description_from_this_server_only(http):
    response = http.get("/api/v0.1/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    urls = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sorted(url.split("?")[0] for url in urls) == [
        "docs/favicon-16x16.png", "docs/favicon-32x32.png", "docs/init.js", "docs/swagger-ui-bundle.js",
        "docs/swagger-ui.css"]
    assert "//" not in page  # no scheme, no host, no CDN: relative to the page, so a proxy path works
    script = http.get(urljoin("/api/v0.1/docs", next(url for url in urls if url.startswith("docs/init.js"))))
    assert 'url: "openapi.json"' in script.get_data(as_text=True)  # /api/v0.1/openapi.json, relative
    assert "validatorUrl: null" in script.get_data(as_text=True)  # else it asks validator.swagger.io
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy and "http" not in policy
    assert response.headers["Cache-Control"] == "no-cache"


def test_every_asset_the_page_names_is_served_cached_for_a_year_by_its_content_hash(http):
    page = http.get("/api/v0.1/docs").get_data(as_text=True)
    types = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}
    for url in re.findall(r'(?:src|href)="([^"]*)"', page):
        response = http.get(urljoin("/api/v0.1/docs", url))
        assert response.status_code == 200, url
        assert response.mimetype == types[Path(url.split("?")[0]).suffix]
        assert response.headers["Cache-Control"] == f"public, max-age={ONE_YEAR}, immutable"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        version = url.split("?v=")[1]
        assert response.headers["ETag"] == f'"{version}"'
        assert version == docs._content_hash(response.get_data())
        again = http.get(urljoin("/api/v0.1/docs", url), headers={"If-None-Match": f'"{version}"'})
        assert again.status_code == 304 and again.get_data() == b""


def test_swagger_ui_is_the_release_the_package_ships_and_renders_openapi_3_1(http):
    bundle = http.get("/api/v0.1/docs/swagger-ui-bundle.js").get_data()
    assert len(bundle) > 500_000  # the whole of Swagger UI, not a loader that fetches it elsewhere
    dist = Path(docs.assets()["swagger-ui.css"].path).parent
    assert int((dist / "VERSION").read_text().strip().lstrip("v").split(".")[0]) >= 5  # 4.x cannot read 3.1


def test_an_asset_asked_for_without_its_current_hash_is_served_but_revalidated(http):
    response = http.get("/api/v0.1/docs/swagger-ui.css?v=an-older-release")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-cache"
    assert http.get("/api/v0.1/docs/swagger-ui.css").headers["Cache-Control"] == "no-cache"


def test_the_page_revalidates_with_its_etag(http):
    first = http.get("/api/v0.1/docs")
    again = http.get("/api/v0.1/docs", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path",
    [
        "/api/v0.1/docs/nothing.js",
        "/api/v0.1/docs/index.html",
        "/api/v0.1/docs/oauth2-redirect.html",  # in the package's dist/, but not one the page uses
        "/api/v0.1/docs/swagger-ui.js.map",
        "/api/v0.1/docs/../openapi.json",
        "/api/v0.1/docs/../../../m2_code_store/api.py",
        "/api/v0.1/docs/..%2f..%2fapi.py",
        "/api/v0.1/docs/%2e%2e/%2e%2e/docs.py",
        "/api/v0.1/docs//etc/passwd",
        "/api/v0.1//m2-customer-codes?barcodes=1",
        "/api/v0.1/docs/dist/swagger-ui.css",
        "/api/v0.1/docs/swagger-ui.css/",
        "/api/v0.1/docs/SWAGGER-UI.CSS",
    ],
)
def test_unknown_or_escaping_asset_paths_answer_the_json_404_never_a_file_or_html(http, path):
    response = http.get(path)
    assert response.status_code == 404
    message = envelope_message(response)
    assert "<" not in response.get_data(as_text=True)
    assert message.startswith("no documentation asset") or "not found" in message.lower()


def test_docs_with_a_trailing_slash_sends_the_browser_to_the_page_by_a_relative_location(http):
    response = http.get("/api/v0.1/docs/")
    assert response.status_code == 308 and response.headers["Location"] == "../docs"
    assert urljoin("https://gateway.example/m2/api/v0.1/docs/", "../docs") == "https://gateway.example/m2/api/v0.1/docs"


def test_the_page_answers_json_404_when_swagger_ui_is_not_installed(http, monkeypatch):
    monkeypatch.setattr(docs, "SWAGGER_UI_PACKAGE", "not_an_installed_package")
    docs.assets.cache_clear()
    docs.page.cache_clear()
    try:
        response = http.get("/api/v0.1/docs")
        assert response.status_code == 404
        assert envelope_message(response) == ("the API documentation needs the not-an-installed-package package, "
                                              "which is not installed here: reinstall the project")
    finally:
        docs.assets.cache_clear()
        docs.page.cache_clear()


# --- 405 answers ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE"])
@pytest.mark.parametrize("path", [*LOOKUP_PATHS, "/health", "/api/v0.1/openapi.json", "/api/v0.1/docs",
                                  "/api/v0.1/docs/swagger-ui.css"])
def test_a_method_other_than_get_answers_405_with_allow_and_the_envelope(http, method, path):
    response = http.open(f"{path}?barcodes=1234", method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert envelope_message(response) == "The method is not allowed for the requested URL."


def test_a_405_carries_allow_with_the_inner_body_too(redis_url, tmp_path):
    app = create_app({"STORE_TARGET": store_with_records(redis_url, tmp_path), "M2_RESPONSE_BODY": "inner"})
    response = app.test_client().post("/api/v0.1/m2-customer-codes?barcodes=1234")
    assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert response.get_json() == {"status": 405, "message": "The method is not allowed for the requested URL.",
                                   "error": "The method is not allowed for the requested URL."}


# --- the description -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(SPEC_PATH.read_text())


def test_the_description_is_valid_openapi_and_served_as_it_is_shipped(spec, http):
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    assert http.get("/api/v0.1/openapi.json").get_json() == spec


def test_the_server_url_is_relative_so_try_it_out_reaches_this_server_behind_a_proxy_path(spec):
    (server,) = spec["servers"]
    assert not urlsplit(server["url"]).scheme and not urlsplit(server["url"]).netloc
    assert not server["url"].startswith("/")  # not even the host's root: a proxy may add a prefix
    for document in ("http://127.0.0.1:8080/api/v0.1/openapi.json",
                     "https://gateway.example/m2/api/v0.1/openapi.json"):
        root = urljoin(document, server["url"])
        assert root.rstrip("/") + "/api/v0.1/openapi.json" == document


@pytest.mark.parametrize("path", LOOKUP_PATHS)
def test_the_barcodes_parameter_states_the_rules_the_api_applies(spec, path):
    operation = spec["paths"][path]["get"]
    (parameter,) = operation["parameters"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == ("barcodes", "query", True)
    assert (parameter["style"], parameter["explode"]) == ("form", False)  # barcodes=1234,5678
    schema = parameter["schema"]
    assert (schema["type"], schema["minItems"]) == ("array", 1)
    # The API counts different barcodes (1234,1234 is one), which maxItems cannot say: with
    # maxItems 1000, schemathesis finds 1001 copies of one barcode accepted.
    assert "maxItems" not in schema
    barcode = spec["components"]["schemas"][schema["items"]["$ref"].rsplit("/", 1)[1]]
    assert barcode["pattern"] == BARCODE_PATTERN
    assert (barcode["minLength"], barcode["maxLength"]) == (1, MAX_BARCODE_LENGTH)
    assert f"{MAX_QUERY_BYTES:,} bytes" in parameter["description"]
    assert f"At most {_max_barcodes('')} different barcodes" in parameter["description"]
    assert set(operation["responses"]) >= {"200", "400", "503"}


def test_every_example_in_the_description_fits_its_schema(spec):
    """Swagger UI shows the examples as what the API answers: they must be answers it can give."""
    def fits(schema: dict, value: object) -> None:
        jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(value)

    checked = 0
    for item in spec["paths"].values():
        operation = item["get"]
        for parameter in operation.get("parameters", []):
            for example in parameter.get("examples", {}).values():
                fits(parameter["schema"], example["value"])
                checked += 1
        for response in operation["responses"].values():
            for media in response.get("content", {}).values():
                for example in media.get("examples", {}).values():
                    fits(media["schema"], example["value"])
                    checked += 1
    assert checked >= 20
    unavailable = spec["paths"][LOOKUP_PATHS[1]]["get"]["responses"]["503"]["content"]["application/json"]
    assert unavailable["examples"]["inner"]["value"]["message"] == UNAVAILABLE


def test_both_lookup_paths_are_described_alike(spec):
    singular, plural = (spec["paths"][path]["get"] for path in LOOKUP_PATHS)
    assert singular["parameters"] == plural["parameters"]
    assert singular["responses"] == plural["responses"]


# --- schemathesis against the real app --------------------------------------------------------

# Loaded from the file (the app is built per test, on the test's Redis); requests go to the app
# through WSGI, at its root: the description's relative server URL is for browsers.
api_schema = schemathesis.openapi.from_path(SPEC_PATH)
api_schema.config.update(base_url="http://localhost")

# A fixed, bounded set of examples (the same every run, a few seconds): a finding is a
# regression, never a flake. Raise max_examples and drop derandomize to fuzz harder by hand.
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(params=["envelope", "inner"])
def fuzzed_app(request, redis_url, tmp_path):
    """The API in each answer shape, on a real Redis holding a few records."""
    return create_app({"STORE_TARGET": store_with_records(redis_url, tmp_path), "M2_RESPONSE_BODY": request.param})


@pytest.fixture(params=[("down", "envelope"), ("down", "inner"), ("empty", "envelope"), ("stale", "inner")],
                ids="-".join)
def app_in_trouble(request, tmp_path):
    """The API with its store down (a port where nothing listens: lookups and /health answer 503),
    empty (/health 503), or holding a data set older than M2_HEALTH_MAX_AGE (/health 503)."""
    state, body = request.param
    config: dict = {"M2_RESPONSE_BODY": body}
    if state == "down":
        config["STORE_TARGET"] = StoreTarget(f"redis://127.0.0.1:{free_port()}/0", "REDIS_URL")
    elif state == "empty":
        config["STORE_TARGET"] = StoreTarget(request.getfixturevalue("redis_url"), "REDIS_URL")
    else:
        config["STORE_TARGET"] = store_with_records(request.getfixturevalue("redis_url"), tmp_path)
        config["M2_HEALTH_MAX_AGE"] = 1e-9  # seconds: any data set is too old
    return create_app(config)


@api_schema.parametrize()
@FUZZ
def test_schemathesis_finds_every_answer_as_the_description_says(case, fuzzed_app):
    """Every default check (status documented, content type, body schema, headers, valid input
    accepted, invalid rejected, 405 with Allow for other methods) on generated requests."""
    case.call_and_validate(app=fuzzed_app)


@api_schema.include(path_regex="m2-customer-code|health").parametrize()
@settings(FUZZ, max_examples=10)
def test_schemathesis_finds_the_503_answers_as_the_description_says(case, app_in_trouble):
    """With the store down, empty or stale, the 503 answers match the description too."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    # Valid input is answered 503 here by design (and 503 is documented): those two checks are
    # about input handling and server faults, not availability.
    case.call_and_validate(app=app_in_trouble, excluded_checks=[positive_data_acceptance, not_a_server_error])
