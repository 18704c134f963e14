"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis + Hypothesis)
against a real server on a loopback port: valid and invalid inputs alike, no answer may be
a 5xx. Mutating endpoints are fuzzed with the token against a throwaway catalog, except
``POST /imports`` and ``POST /storage/reindex`` (random paths on this machine). The same
requests sent with a foreign ``Host`` header (DNS rebinding) must all be refused with 421,
whatever they ask and whether or not they carry the token."""

from __future__ import annotations


import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from test_api import AUTH, Env

EXAMPLES = 20
SKIP_WITH_TOKEN = {"POST /imports", "POST /storage/reindex"}
NEVER = {"GET /events"}  # an endless stream; tested in test_api


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    e = Env(tmp, tmp / "archive").start()
    e.import_card()
    yield e
    e.close()


def operations(app):
    schema = schemathesis.openapi.from_dict(app.openapi())
    for result in schema.get_all_operations():
        op = result.ok()
        if op.label not in NEVER:
            yield op


def test_openapi_schema_lists_every_endpoint(live):
    paths = live.client.get("/openapi.json").json()["paths"]
    for p in ("/import-sessions", "/import-sessions/{session_id}", "/import-sessions/{session_id}/storage-status",
              "/import-sessions/{session_id}/update-storage-path", "/import-sessions/{session_id}/images",
              "/images/{image_id}/file", "/images/{image_id}/thumbnail", "/storage/scan-locations", "/metrics",
              "/events", "/imports", "/import-sessions/{session_id}/resume", "/import-sessions/{session_id}/rollback",
              "/storage/reindex"):
        assert p in paths, p


@pytest.mark.parametrize("with_token", [False, True], ids=["anonymous", "token"])
def test_fuzzed_requests_never_get_a_server_error(live, with_token):
    failures: list[str] = []
    headers = AUTH if with_token else {}
    for op in operations(live.server.app):
        if with_token and op.label in SKIP_WITH_TOKEN:
            continue
        strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case):
            response = case.call(base_url=live.server.url, headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{op.label}: {response.status_code} {response.content[:200]!r} for {case.path_parameters} "
                                f"{case.query} {case.body!r:.200}")
            assert b"Traceback" not in response.content

        run()
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("with_token", [False, True], ids=["anonymous", "token"])
def test_fuzzed_requests_naming_a_foreign_host_are_all_refused(live, with_token):
    answers: dict[int, list[str]] = {}
    headers = {**(AUTH if with_token else {}), "Host": "rebound.attacker.example"}
    for op in operations(live.server.app):
        strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES // 2, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case):
            response = case.call(base_url=live.server.url, headers=headers, timeout=30)
            answers.setdefault(response.status_code, []).append(f"{op.label} {case.path_parameters} {case.query}")

        run()
    assert set(answers) == {421}, {status: calls[:3] for status, calls in answers.items() if status != 421}
