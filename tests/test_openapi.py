"""The check API against its own OpenAPI document: schemathesis generates requests from the
document and sends them to a real server; no request may get a 5xx, and answers must match it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.servers import serve
from textguard import Settings
from textguard.serve.server import create_app

TOKEN = "schema-test-admin-token-0123456789"


@pytest.fixture(scope="module")
def api_schema(base_settings: Settings) -> Iterator[schemathesis.BaseSchema]:
    settings = base_settings.replace(index="openapi-fuzz", admin_token=TOKEN, max_request_bytes=64 * 1024)
    with serve(create_app(settings), lifespan="on") as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance])
