"""m2_code_store.aws_lambda.handler: recorded-shape API Gateway v1, v2 and ALB events, answered as the
deployed original answers, and read the way its consumers read the body; configured from the
original's config/{ENVIRONMENT}.yaml with a KMS-encrypted endpoint (moto)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from m2_code_store import aws_lambda
from m2_code_store.lambda_package import (
    rest_v1_event as rest_v1,  # the REST (v1) event the bench sends too
)
from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from simulators.redis_server import free_port

HEADER = "Item barcode,Accession date,Customer code,Delete date\n"
BARCODES = "33433077906331,1234,99999"


@pytest.fixture
def store(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "items.csv"
    path.write_text(HEADER + "1234,,NX,\n33433077906331,,QQ,\n")
    client = redis.Redis.from_url(redis_url)
    load(client, read_export(path))
    client.close()
    monkeypatch.setattr(aws_lambda, "_handler", None)  # a cold container
    monkeypatch.delenv("M2_RESPONSE_BODY", raising=False)
    return redis_url


def http_v2(path: str, barcodes: str) -> dict[str, Any]:
    return {
        "version": "2.0", "routeKey": f"GET {path}", "rawPath": path, "rawQueryString": f"barcodes={barcodes}",
        "headers": {"accept": "*/*", "host": "abc123.execute-api.us-east-1.amazonaws.com"},
        "queryStringParameters": {"barcodes": barcodes},
        "requestContext": {"http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "10.0.0.1",
                                    "userAgent": "node-fetch"}, "requestId": "JKJaXmPLvHcESHA=", "stage": "$default",
                           "routeKey": f"GET {path}", "timeEpoch": 1583348638390},
        "isBase64Encoded": False,
    }


def alb(path: str, barcodes: str) -> dict[str, Any]:
    return {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
                                                     "targetgroup/m2/6d0ecf831eec9f09"}},
        "httpMethod": "GET", "path": path, "queryStringParameters": {"barcodes": barcodes.replace(",", "%2C")},
        "headers": {"accept": "*/*", "host": "m2.internal", "x-forwarded-for": "10.0.0.1"},
        "body": "", "isBase64Encoded": False,
    }


def consumer_map(answer: dict[str, Any]) -> dict[str, str | None]:
    """discovery-api: response.status === 400 ? {} : response.data.reduce(...), on the HTTP body."""
    response = json.loads(answer["body"])
    if response["status"] == 400:
        return {}
    return {entry["barcode"]: entry["m2CustomerCode"] for entry in response["data"]}


@pytest.mark.parametrize("path", ["/api/v0.1/m2-customer-code", "/api/v0.1/m2-customer-codes"])
@pytest.mark.parametrize("event", [rest_v1, http_v2, alb], ids=["rest-v1", "http-v2", "alb"])
def test_every_event_kind_is_answered_as_the_original_answers(
        store: str, monkeypatch: pytest.MonkeyPatch, event: Any, path: str) -> None:
    monkeypatch.setenv("REDIS_URL", store)
    answer = aws_lambda.handler(event(path, BARCODES), None)
    assert answer["statusCode"] == 200
    headers = answer["headers"] if event is not alb else answer.get("headers") or {
        name: values[0] for name, values in answer["multiValueHeaders"].items()}
    assert headers["Content-Type"] == "application/json"  # as the original wrote it
    assert event is alb or "multiValueHeaders" not in answer
    assert json.loads(answer["body"]) == {"status": 200, "data": [
        {"barcode": "33433077906331", "m2CustomerCode": "QQ"}, {"barcode": "1234", "m2CustomerCode": "NX"},
        {"barcode": "99999", "m2CustomerCode": None}]}
    assert consumer_map(answer) == {"33433077906331": "QQ", "1234": "NX", "99999": None}


def test_a_bad_request_is_a_400_body_the_consumer_reads_as_nothing(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", store)
    answer = aws_lambda.handler(rest_v1("/api/v0.1/m2-customer-codes", None), None)
    body = json.loads(answer["body"])
    assert answer["statusCode"] == body["status"] == 400
    assert body["message"] == body["error"] and "barcodes" in body["message"]
    assert consumer_map(answer) == {}


@mock_aws
def test_configured_as_the_original_from_environment_yaml_with_a_kms_encrypted_endpoint(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config/production.yaml as the deployed original has it: the region in plaintext, the endpoint
    KMS-encrypted; decrypted once per container."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    kms = boto3.client("kms", region_name="us-east-1")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    endpoint = store.removeprefix("redis://").removesuffix("/0")  # host:port, as ElastiCache shows it
    ciphertext = base64.b64encode(kms.encrypt(KeyId=key, Plaintext=endpoint.encode())["CiphertextBlob"]).decode()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "production.yaml").write_text(
        "---\nPLAINTEXT_VARIABLES:\n    AWS_REGION: us-east-1\n"
        f"ENCRYPTED_VARIABLES:\n    REDIS_ENDPOINT: {ciphertext}\n")
    monkeypatch.chdir(tmp_path)  # the Lambda runs from its package directory
    monkeypatch.setenv("ENVIRONMENT", "production")
    calls = []
    real = boto3.client
    monkeypatch.setattr(boto3, "client", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(3):
        answer = aws_lambda.handler(http_v2("/api/v0.1/m2-customer-codes", "1234"), None)
        assert consumer_map(answer) == {"1234": "NX"}
    assert calls == [("kms",)]  # decrypted once for the container's life


def test_an_environment_without_its_yaml_says_what_to_add(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENVIRONMENT", "qa")
    with pytest.raises(Exception, match=r"ENVIRONMENT=qa, but .*config/qa.yaml does not exist"):
        aws_lambda.handler(http_v2("/api/v0.1/m2-customer-codes", "1234"), None)


def test_the_handler_leaves_the_process_environment_alone(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving inner bodies is the handler's own setting, not an M2_RESPONSE_BODY it writes into the
    environment (where every process started afterwards would inherit it)."""
    monkeypatch.setenv("REDIS_URL", store)
    assert aws_lambda.handler(rest_v1("/api/v0.1/m2-customer-codes", "1234"), None)["statusCode"] == 200
    assert "M2_RESPONSE_BODY" not in os.environ


@pytest.mark.parametrize("event", [rest_v1, http_v2, alb], ids=["rest-v1", "http-v2", "alb"])
def test_a_store_that_does_not_answer_is_a_400_body_as_the_original_answered_it(
        monkeypatch: pytest.MonkeyPatch, event: Any) -> None:
    """The original answered 400 when the store failed; its consumers turn that into no codes
    (a 503 without data would make discovery-api's response.data.reduce throw)."""
    monkeypatch.setattr(aws_lambda, "_handler", None)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    answer = aws_lambda.handler(event("/api/v0.1/m2-customer-codes", BARCODES), None)
    body = json.loads(answer["body"])
    assert answer["statusCode"] == body["status"] == 400
    assert body["message"] == body["error"] == "the customer code store is not answering; try again shortly"
    assert consumer_map(answer) == {}


def staged(path: str, stage: str) -> dict[str, Any]:
    event = http_v2(path, BARCODES)
    return {**event, "requestContext": {**event["requestContext"], "stage": stage}}


@pytest.mark.parametrize("prefixed", [
    pytest.param(lambda: staged("/prod/api/v0.1/m2-customer-codes", "prod"), id="v2-named-stage"),
    pytest.param(lambda: staged("/api/v0.1/m2-customer-codes", "api"), id="v2-stage-named-api-custom-domain"),
    pytest.param(lambda: staged("/api/api/v0.1/m2-customer-codes", "api"), id="v2-stage-named-api"),
    pytest.param(lambda: rest_v1("/m2/api/v0.1/m2-customer-codes", BARCODES), id="v1-custom-domain-base-path"),
    pytest.param(lambda: staged("/healthcheck/api/v0.1/m2-customer-codes", "healthcheck"), id="v2-stage-named-health..."),
    pytest.param(lambda: rest_v1("/metrics-v2/api/v0.1/m2-customer-codes", BARCODES), id="v1-base-path-metrics..."),
])
def test_a_stage_or_base_path_before_the_api_path_is_not_part_of_the_route(
        store: str, monkeypatch: pytest.MonkeyPatch, prefixed: Any) -> None:
    monkeypatch.setenv("REDIS_URL", store)
    answer = aws_lambda.handler(prefixed(), None)
    assert answer["statusCode"] == 200, answer["body"]
    assert consumer_map(answer) == {"33433077906331": "QQ", "1234": "NX", "99999": None}


@pytest.mark.parametrize("event", [
    pytest.param(lambda: {**staged("/prod/health", "prod"), "rawQueryString": ""}, id="v2-named-stage"),
    pytest.param(lambda: rest_v1("/m2/health"), id="v1-custom-domain-base-path"),
    pytest.param(lambda: {**staged("/health-prod/health", "health-prod"), "rawQueryString": ""}, id="v2-stage-health-prod"),
])
def test_a_stage_or_base_path_is_dropped_from_the_health_path(
        store: str, monkeypatch: pytest.MonkeyPatch, event: Any) -> None:
    monkeypatch.setenv("REDIS_URL", store)
    answer = aws_lambda.handler(event(), None)
    assert answer["statusCode"] == 200 and json.loads(answer["body"])["records"] == 2


def test_hand_written_events_missing_fields_are_answered_not_crashed(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Console and local-invoke test events leave out fields real gateways always send."""
    monkeypatch.setenv("REDIS_URL", store)
    bare_v2 = {"version": "2.0", "rawPath": "/api/v0.1/m2-customer-codes", "requestContext": {"http": {"method": "GET"}}}
    answer = aws_lambda.handler(bare_v2, None)
    assert answer["statusCode"] == 400 and "barcodes" in json.loads(answer["body"])["message"]
    answer = aws_lambda.handler({**bare_v2, "rawQueryString": "barcodes=1234"}, None)
    assert consumer_map(answer) == {"1234": "NX"}
    assert consumer_map(aws_lambda.handler({**bare_v2, "rawQueryString": None}, None)) == {}  # the JSON 400
    assert consumer_map(aws_lambda.handler({**bare_v2, "rawQueryString": "barcodes=1234", "cookies": None}, None)) == {
        "1234": "NX"}
    null_method = {**bare_v2, "rawQueryString": "barcodes=1234", "requestContext": {"http": {"method": None}}}
    assert consumer_map(aws_lambda.handler(null_method, None)) == {"1234": "NX"}
    for multi in (None, {}):
        event = {**rest_v1("/api/v0.1/m2-customer-codes", "1234"), "multiValueQueryStringParameters": multi}
        assert consumer_map(aws_lambda.handler(event, None)) == {"1234": "NX"}
    minimal = {"path": "/api/v0.1/m2-customer-codes", "queryStringParameters": {"barcodes": "1234"}}
    assert consumer_map(aws_lambda.handler(minimal, None)) == {"1234": "NX"}
    assert aws_lambda.handler({}, None)["statusCode"] == 404


def test_the_docs_page_assets_are_answered_as_binary(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", store)
    answer = aws_lambda.handler(rest_v1("/api/v0.1/docs/favicon-32x32.png"), None)
    assert answer["statusCode"] == 200 and answer["isBase64Encoded"] is True
    assert base64.b64decode(answer["body"]).startswith(b"\x89PNG")
    lookup = aws_lambda.handler(rest_v1("/api/v0.1/m2-customer-codes", "1234"), None)
    assert lookup["isBase64Encoded"] is False and consumer_map(lookup) == {"1234": "NX"}


def test_a_cold_start_with_redis_url_imports_only_what_a_lookup_needs(store: str) -> None:
    """No YAML, boto3 or column machinery when the endpoint comes from REDIS_URL (128 MB function)."""
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from m2_code_store import aws_lambda\n"
        "from m2_code_store.lambda_package import rest_v1_event\n"
        "answer = aws_lambda.handler(rest_v1_event('/api/v0.1/m2-customer-codes', '1234'), None)\n"
        "assert json.loads(answer['body'])['data'][0]['m2CustomerCode'] == 'NX', answer\n"
        "print(sorted(m for m in ('yaml', 'boto3', 'botocore', 'pyarrow', 'numpy', 'pandas') if m in sys.modules))\n"
    )
    environ = {key: value for key, value in os.environ.items() if key != "ENVIRONMENT"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**environ, "REDIS_URL": store})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
