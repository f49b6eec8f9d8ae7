"""Schema-driven fuzzing (schemathesis) of every route of a real server process.

Spec: whatever a client sends to any route of ``/openapi.json`` (bodies valid
for the schema and bodies that break it: wrong types, odd Unicode, bytes that
are not JSON), the answer is never a 5xx, its status and content type are ones
the schema declares, and a JSON body matches the declared schema. Afterwards
no request is running or waiting and no KV page is held.

Two of schemathesis's checks are off, on purpose: ``positive_data_acceptance``
(a schema-valid body may still be refused with a 400: an empty prompt, token
ids outside the vocabulary, a prompt over the context) and ``negative_data_rejection`` (the
models accept, by design, some values the JSON schema calls wrong: numbers as
strings, ``0``/``1`` for booleans; see ``pdcore.server.protocol``).

schemathesis's own pytest plugin (``from_fixture``) does not run on pytest 9,
so each route is a plain Hypothesis test over its positive and negative cases.
"""

from __future__ import annotations

import pytest
import schemathesis
from fuzz.profile import SCHEMA_EXAMPLES, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

EXCLUDED = [positive_data_acceptance, negative_data_rejection]
# Half the bodies get a valid prompt and no model name, so that the other fuzzed
# fields (sampling, logprobs, streaming, ids) get past the first 400 to the engine.
ANCHORS = {
    "/generate": {"input_ids": [5, 6], "text": None},
    "/v1/completions": {"prompt": "Hi", "model": None},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "model": None},
    "/tokenize": {"prompt": "Hi", "messages": None},
    "/detokenize": {"tokens": [5, 6]},
}
ROUTES = [
    ("POST", "/generate"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("POST", "/abort_request"),
    ("GET", "/health"),
    ("POST", "/health"),
    ("GET", "/health_generate"),
    ("POST", "/health_generate"),
    ("GET", "/model_info"),
    ("GET", "/get_model_info"),
    ("GET", "/server_info"),
    ("GET", "/get_server_info"),
    ("GET", "/flush_cache"),
    ("POST", "/flush_cache"),
    ("POST", "/start_profile"),
    ("POST", "/stop_profile"),
    ("GET", "/metrics"),
    ("POST", "/tokenize"),
    ("POST", "/v1/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/v1/detokenize"),
]


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def test_the_routes_fuzzed_are_all_the_routes(api_schema):
    served = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert served == set(ROUTES), "a route was added or removed: update ROUTES"


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_route_answers_a_5xx_or_off_schema(api_schema, fuzz_server, cases, method, path):
    operation = api_schema[path][method]
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @fuzz_settings(SCHEMA_EXAMPLES)
    @given(case=strategy, anchor=st.booleans())
    def fuzz(case, anchor):
        if anchor and path in ANCHORS and isinstance(case.body, dict):
            case.body.update(ANCHORS[path])
        if path == "/start_profile" and isinstance(case.body, dict):
            if isinstance(case.body.get("output_dir"), str):  # traces stay in a temp folder
                case.body["output_dir"] = f"{fuzz_server.dir}/traces"
        cases()
        response = case.call(timeout=60)
        case.validate_response(response, excluded_checks=EXCLUDED)

    fuzz()


SERVED = [
    ("/generate", {"input_ids": [5, 6], "stream": True, "sampling_params": {"max_new_tokens": 3}}),
    ("/v1/completions", {"prompt": "Hi", "stream": True, "max_tokens": 3, "echo": True}),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "stream": True, "n": 2},
    ),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True}),
]


@pytest.mark.parametrize(("path", "body"), SERVED, ids=[f"{p} {sorted(b)}" for p, b in SERVED])
def test_served_answers_conform_too(api_schema, path, body):
    """The fuzz rarely gets a stream through; these do (SSE events, logprobs, n)."""
    case = api_schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call(timeout=60)
    assert response.status_code == 200, response.text[:300]
    case.validate_response(response, excluded_checks=EXCLUDED)


def test_server_is_idle_and_serving_after_the_fuzz(fuzz_server):
    fuzz_server.post("/stop_profile")  # in case a fuzzed body started the profiler
    assert fuzz_server.idle() == {"running": 0, "waiting": 0, "used_pages": 0}
    # ignore_eos: the default sampling (temperature 1) may draw EOS early, and the
    # sampler's random state here depends on everything the fuzz sent before.
    body = {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 3, "ignore_eos": True}}
    ok = fuzz_server.post("/generate", json=body)
    assert ok.status_code == 200 and ok.json()["meta_info"]["completion_tokens"] == 3
