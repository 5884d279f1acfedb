"""No client input is a 5xx: a seeded fuzz campaign against a real uvicorn, and the 5xx it found.

The campaign is ``loadtest.fuzz`` (schemathesis on /openapi.json plus Hypothesis strategies of
bodies, images, tensors, forms, query strings and infer requests), bounded here to a few thousand
requests; ``python -m loadtest.fuzz --requests 10000`` runs the full one (docs/guarantees.md).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.fuzz import SOURCES, run_campaign, summary
from service.inputs.body import MAX_JSON_CONTAINERS, MAX_JSON_STRINGS
from tests.support.server import running_service

CI_REQUESTS = 2_500
SEED = 20261130


@pytest.fixture(scope="module")
def server(digits_repo: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m service`` on the digits repository."""
    with running_service(digits_repo, {"ROCKETSERVE_LOG_LEVEL": "warning"}) as started:
        yield started


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_seeded_fuzz_campaign_finds_no_5xx(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, process = server
    started = time.monotonic()
    tally = run_campaign(url, CI_REQUESTS, SEED)
    report = summary(tally, url, SEED, time.monotonic() - started)
    print(f"\n{report}\nrequests: {tally.total}, 5xx: {tally.five_xx}")
    assert tally.total == CI_REQUESTS
    assert all(tally.sent[source] > 0 for source in SOURCES)
    assert tally.five_xx == 0, report
    assert not tally.findings, report
    assert process.poll() is None
    assert httpx.get(url + "/readyz").status_code == 200


TENSOR_ROW = "[" + ",".join(["0.5"] * 8) + "]"
GOOD_TENSOR = "[[" + ",".join([TENSOR_ROW] * 8) + "]]"  # [1, 8, 8]

# Each of these was a 500 before the campaign found it; each is now the 4xx named.
FOUND: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "an integer of 5,000 digits in a tensor: int() refuses it inside json.loads",
        {"url": "/predict", "content": b'{"tensor": [[[1' + b"0" * 5000 + b"]]]}"},
        400,
        "invalid_json",
    ),
    (
        "a tensor of null: taken for a request without a tensor, then no image to stack",
        {"url": "/predict", "content": b'{"tensor": null}'},
        422,
        "invalid_tensor",
    ),
    (
        "a v2 BYTES input of shape [0]: no image to stack",
        {
            "url": "/v2/models/digits-logreg/infer",
            "content": b'{"inputs": [{"name": "input", "datatype": "BYTES", "shape": [0], '
            b'"data": []}]}',
        },
        400,
        "",
    ),
]


@pytest.mark.parametrize(
    ("what", "request_", "status", "code"), FOUND, ids=[f[0].split(":")[0] for f in FOUND]
)
def test_the_5xx_the_campaign_found_are_4xx(
    server: tuple[str, subprocess.Popen[bytes]],
    what: str,
    request_: dict[str, Any],
    status: int,
    code: str,
) -> None:
    headers = {"content-type": "application/json"}
    r = httpx.post(server[0] + request_["url"], content=request_["content"], headers=headers)
    assert r.status_code == status, (what, r.text)
    error = r.json()["error"]  # {"code", "message"} on /predict, a message on the v2 routes
    assert error["code"] == code if code else isinstance(error, str), (what, r.text)


@pytest.mark.parametrize(
    ("body", "limit"),
    [
        ('{"tensor": [' + ",".join(["[]"] * (MAX_JSON_CONTAINERS + 1)) + "]}", "arrays"),
        ('{"tensor": [' + ",".join(['"ab"'] * (MAX_JSON_STRINGS + 1)) + "]}", "strings"),
    ],
    ids=["arrays", "strings"],
)
def test_json_that_would_cost_many_objects_is_refused_before_parsing(
    server: tuple[str, subprocess.Popen[bytes]], body: str, limit: str
) -> None:
    # 3 bytes of '[],' become a ~60-byte Python list: such bodies are refused before json.loads.
    headers = {"content-type": "application/json"}
    r = httpx.post(server[0] + "/predict", content=body.encode(), headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert limit in r.json()["error"]["message"]
    ok = '{"tensor": ' + GOOD_TENSOR + "}"  # a real tensor is far under both limits
    assert httpx.post(server[0] + "/predict", content=ok, headers=headers).status_code == 200
