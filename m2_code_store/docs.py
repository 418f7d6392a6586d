"""``GET /api/v0.1/docs``: the API's OpenAPI description as an interactive page (Swagger UI).

Everything the page loads comes from this server: Swagger UI's files as the flask-swagger-ui
package ships them (the machines that run the API may have no internet, so no CDN), a small
start-up script, and the description at ``/api/v0.1/openapi.json``. Every URL in the page is
relative, and so is the description's server URL, so the page and its "Try it out" also work
behind a proxy that serves the API under a path prefix.

Assets are served from a fixed list (no file name from the request ever reaches the file
system); an unknown name answers the API's JSON 404. Each asset's URL carries a hash of its
content, so a browser may keep it for a year and fetches it again only when it changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from flask import Blueprint, Response, abort, request, send_file

bp = Blueprint("docs", __name__)

DOCS_PATH = "/api/v0.1/docs"
SWAGGER_UI_PACKAGE = "flask_swagger_ui"  # its dist/ holds Swagger UI's release files
ONE_YEAR = 365 * 24 * 3600

# Swagger UI's files the page uses, by the name they are served under: (file in dist/, media type).
SWAGGER_UI_FILES = {
    "swagger-ui.css": ("swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript"),
    "favicon-32x32.png": ("favicon-32x32.png", "image/png"),
    "favicon-16x16.png": ("favicon-16x16.png", "image/png"),
}

# Started from a file, not inline, so the page's Content-Security-Policy allows no inline script.
# validatorUrl: null, or Swagger UI asks validator.swagger.io to check the description.
INIT_SCRIPT = b"""\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null,
    supportedSubmitMethods: ["get"],
    tryItOutEnabled: true,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0
  });
});
"""

PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>M2 customer code lookup: API documentation</title>
  <link rel="stylesheet" href="{css}">
  <link rel="icon" type="image/png" href="{icon32}" sizes="32x32">
  <link rel="icon" type="image/png" href="{icon16}" sizes="16x16">
  <style>body {{ margin: 0; background: #fafafa; }}</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{bundle}"></script>
  <script src="{init}"></script>
</body>
</html>
"""

# Only this server: no CDN, no validator, no fonts from elsewhere, even if a Swagger UI release
# added one. Swagger UI sets style attributes, and its icons are data: URIs.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'self'; form-action 'none'")


@dataclass(frozen=True)
class Asset:
    """One file the page loads: where it is (or its bytes), its media type and content hash."""

    mimetype: str
    version: str
    path: Path | None = None
    content: bytes = b""


def _content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@cache
def assets() -> dict[str, Asset]:
    """The page's assets by name (hashed once per process, on the first request for the page)."""
    spec = importlib.util.find_spec(SWAGGER_UI_PACKAGE)  # found, not imported: nothing runs
    if spec is None or not spec.submodule_search_locations:
        abort(404, description=f"the API documentation needs the {SWAGGER_UI_PACKAGE.replace('_', '-')} "
                               "package, which is not installed here: reinstall the project")
    dist = Path(next(iter(spec.submodule_search_locations))) / "dist"
    found = {name: Asset(mimetype, _content_hash((dist / file).read_bytes()), path=dist / file)
             for name, (file, mimetype) in SWAGGER_UI_FILES.items()}
    found["init.js"] = Asset("text/javascript", _content_hash(INIT_SCRIPT), content=INIT_SCRIPT)
    return found


@cache
def page() -> bytes:
    """The HTML page, its asset URLs relative to it and versioned by content."""
    def url(name: str) -> str:
        return f"docs/{name}?v={assets()[name].version}"

    return PAGE.format(css=url("swagger-ui.css"), icon32=url("favicon-32x32.png"),
                       icon16=url("favicon-16x16.png"), bundle=url("swagger-ui-bundle.js"),
                       init=url("init.js")).encode()


@bp.get(DOCS_PATH)
def docs_page() -> Response:
    """The interactive documentation of the API."""
    response = Response(page(), mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"  # small; it names the current assets
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.add_etag()
    response.make_conditional(request)  # in place: a 304 when the browser's copy is current
    return response


@bp.get(DOCS_PATH + "/")
def docs_slash() -> Response:
    """``docs/`` sends the browser to ``docs`` (relative: right behind a proxy path too)."""
    return Response(status=308, headers={"Location": "../docs"})


@bp.get(DOCS_PATH + "/<path:name>")
def docs_asset(name: str) -> Response:
    """One of the page's assets; a year's cache when asked for by its current content hash."""
    asset = assets().get(name)
    if asset is None:
        abort(404, description=f"no documentation asset {name[:80]!r}: the page is at {DOCS_PATH}")
    current = request.args.get("v") == asset.version
    if asset.path is not None:
        response = send_file(asset.path, mimetype=asset.mimetype, etag=asset.version, conditional=True,
                             max_age=None)
    else:
        response = Response(asset.content, mimetype=asset.mimetype)
        response.set_etag(asset.version)
        response.make_conditional(request)
    # Another version's URL (a page cached before an upgrade) gets today's file, revalidated.
    response.headers["Cache-Control"] = f"public, max-age={ONE_YEAR}, immutable" if current else "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
