"""The AWS Lambda entry point: ``m2_code_store.aws_lambda.handler``, a drop-in for the original's ``main.handler``.

API Gateway REST (v1) and HTTP API (v2) proxy events and Application Load Balancer events go
through apig-wsgi to the same Flask app as the HTTP server, serving inner bodies
(``M2_RESPONSE_BODY=inner``): the Lambda answers ``{"statusCode": S, "body": "<JSON of {"status":
S, "data": [...]}>", "headers": {"Content-Type": "application/json"}}``, and the gateway hands the
consumers the body they read (``response.data``, ``response.status``).

Configuration as the original reads it (``ENVIRONMENT`` and ``config/{ENVIRONMENT}.yaml``, the
endpoint KMS-encrypted), or ``REDIS_URL`` / ``REDIS_ENDPOINT_ENCRYPTED``, which win: see
:mod:`m2_code_store.config`. It is read, and the endpoint decrypted, once per container (on the
first event). The app's modules (Flask, redis-py, this package; no pyarrow or numpy) are imported
with this module, in Lambda's init phase, which runs with more CPU than a 128 MB function's
events and is what provisioned concurrency and SnapStart run ahead of time; boto3 only when the
endpoint is encrypted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from apig_wsgi import make_lambda_handler

from m2_code_store.api import _response_body, create_app

__all__ = ["handler"]

_handler: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None


def _build() -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    body = os.environ.get("M2_RESPONSE_BODY", "").strip() or "inner"  # inner: what API Gateway's consumers read
    return make_lambda_handler(create_app({"M2_RESPONSE_BODY": _response_body(body)}), binary_support=True)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function's handler (set the function's handler to ``m2_code_store.aws_lambda.handler``)."""
    global _handler
    if _handler is None:
        _handler = _build()
    return as_the_original(_handler(routed(event), context), event)


API_ROOT = "/api/v0.1/"
PAGES = ("/health", "/metrics")  # the app's paths outside API_ROOT


def _is_app_path(path: str) -> bool:
    return path.startswith(API_ROOT) or path in PAGES or path.startswith(tuple(f"{page}/" for page in PAGES))


def routed(event: dict[str, Any]) -> dict[str, Any]:
    """*event* as the app routes it (a shallow copy, changed only where needed).

    - The path without what API Gateway puts before the app's own (:func:`_app_path`): an HTTP
      API (v2) stage other than ``$default`` starts ``rawPath`` (``/prod/api/v0.1/…``), and a
      custom domain's base path mapping starts a REST API's ``path`` (``/m2/health``); the
      original answered whatever path reached it.
    - The fields a hand-written or console test event may leave out or null, which apig-wsgi
      needs: the method, a v2 event's ``rawQueryString``, ``headers``, ``cookies`` and
      ``requestContext.http`` details, and a v1 event's ``multiValueQueryStringParameters``
      empty or null beside its single values.
    """
    event = dict(event)
    if event.get("version") == "2.0":
        event["rawQueryString"] = event.get("rawQueryString") or ""
        event["headers"] = event.get("headers") or {}
        event["cookies"] = event.get("cookies") or []
        context = dict(event.get("requestContext") or {})
        http = dict(context.get("http") or {})
        for field, default in (("method", "GET"), ("sourceIp", ""), ("protocol", "HTTP/1.1")):
            http[field] = http.get(field) or default
        context["http"], event["requestContext"] = http, context
        event["rawPath"] = _app_path(event.get("rawPath") or "/")
    else:
        event["httpMethod"] = event.get("httpMethod") or "GET"
        event["path"] = _app_path(event.get("path") or "/")
        if "multiValueQueryStringParameters" in event and not event["multiValueQueryStringParameters"]:
            event["multiValueQueryStringParameters"] = {
                name: [value] for name, value in (event.get("queryStringParameters") or {}).items()}
    return event


def _app_path(path: str) -> str:
    """*path* from the app's own part on: ``/m2/api/v0.1/x`` is ``/api/v0.1/x``, ``/m2/health`` is ``/health``."""
    if _is_app_path(path):
        return path
    at = path.find(API_ROOT)
    if at > 0:
        return path[at:]
    for page in PAGES:
        if path.endswith(page):
            return page
    return path


def as_the_original(response: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """apig-wsgi's answer in the original's shape: ``headers`` (not ``multiValueHeaders``) with
    names as the original wrote them (``Content-Type``), for a caller that invokes the function
    directly and reads ``headers["Content-Type"]``. API Gateway takes either form; an Application
    Load Balancer whose target group has multi-value headers on needs ``multiValueHeaders`` back,
    so there only the names change."""
    alb = "elb" in (event.get("requestContext") or {})
    multi = response.get("multiValueHeaders")
    if multi is not None and not alb:
        del response["multiValueHeaders"]
        response["headers"] = {name: ",".join(values) for name, values in multi.items()}
    for key in ("headers", "multiValueHeaders"):
        if key in response:
            response[key] = {_canonical(name): value for name, value in response[key].items()}
    return response


def _canonical(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))
