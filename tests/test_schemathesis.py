"""Schemathesis against the running app's OpenAPI description: no server errors, no schema violations.

Every operation is fuzzed with valid and invalid data (a bounded number of examples each), with a valid
bearer token, half the time aimed at a real session and message of that customer so the success paths
are exercised too. Checks: not a server error, status code, content type and response schema conform.
Schemathesis is synchronous; it runs in a thread while the server answers in the test's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import LiveServer
from tests.history_helpers import branch_frame, completed, fresh_customer, send_turn

EXAMPLES_PER_MODE = 25
RUN_TIMEOUT_S = 120.0  # a guard against a hang, not a timing: a loaded CI machine needs ~40 s
SEED_TIMEOUT_S = 10.0
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


Seeder = Callable[[bool], dict[str, str]]


def fuzz(spec: dict[str, Any], base_url: str, token: str, seed: Seeder) -> list[str]:
    """Run every operation in both generation modes; describe each failure found.

    Each operation gets a fresh real session (``seed``), and must have answered 2xx at least once, so the
    success paths and their response schemas are checked, not only the refusals.
    """
    schema = schemathesis.openapi.from_dict(spec)
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the OpenAPI description does not load: {result.err()}"
        operation = result.ok()
        statuses, real = set[int](), seed("{request_id}" in operation.path)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            test = _property(operation.as_strategy(generation_mode=mode), base_url, token, real, statuses)
            try:
                test()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid input"  # no params
            except Exception as exc:  # one report per operation and mode; carry on with the others
                failures.append(f"{operation.label} ({mode.value}): {exc}")
        if not any(200 <= status < 300 for status in statuses):
            failures.append(f"{operation.label}: never succeeded (statuses {sorted(statuses)})")
    return failures


def _property(strategy: Any, base_url: str, token: str, real: dict[str, str], statuses: set[int]) -> Any:
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: keep the run bounded
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, aim=st.booleans())
    def check(case: Case[Any], aim: bool) -> None:
        if aim:
            _aim(case, real)
        response = case.call_and_validate(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS, timeout=10
        )
        statuses.add(response.status_code)

    return check


def _aim(case: Case[Any], real: dict[str, str]) -> None:
    """Point the case at the real session and message (path parameters, and a message_id in a body)."""
    for name in ("session_id", "message_id", "request_id"):
        if case.path_parameters and name in case.path_parameters and name in real:
            case.path_parameters[name] = real[name]
    if isinstance(case.body, dict) and "message_id" in case.body:
        case.body["message_id"] = real["message_id"]


@pytest.fixture
def hypothesis_home(tmp_path: Path) -> Iterator[None]:
    """Hypothesis keeps caches in a directory; keep it out of the repository."""
    set_hypothesis_home_dir(tmp_path / "hypothesis")
    yield
    set_hypothesis_home_dir(None)


async def seeded(server: LiveServer, customer: str, running: bool) -> dict[str, str]:
    """A branched session of ``customer``: its id and its second user message's id; with ``running``, also
    the request_id of a turn left running (its client gone) for the operations that name one."""
    async with await server.client(customer) as client:
        first = await completed(client, "Seed session for the fuzzer")
        second = await completed(client, "A second turn", session_id=first.session_id or "")
        await send_turn(
            client, branch_frame(first.session_id or "", "A branch", edit_of=second.user_message_id)
        )
        seed = {"session_id": first.session_id or "", "message_id": second.user_message_id or ""}
        if running:
            rid = await client.chat("Still going", options={"chunks": 1000, "delay_ms": 50})
            await client.wait_for(rid, "text")
            seed["request_id"] = rid
    return seed


async def stop_running(server: LiveServer, customer: str, seeds: list[dict[str, str]]) -> None:
    """Cancel the turns the seeds left running (those the fuzzer did not), so the server stops at once."""
    async with server.http(customer) as http:
        for seed in seeds:
            if "request_id" in seed:
                await http.post(f"/api/v1/turns/{seed['request_id']}/cancel")


@pytest.mark.usefixtures("hypothesis_home")
async def test_the_api_holds_its_openapi_description(server: LiveServer) -> None:
    customer, loop = fresh_customer(), asyncio.get_running_loop()
    async with server.http(None) as http:
        spec = (await http.get("/openapi.json")).json()

    seeds: list[dict[str, str]] = []

    def seed(running: bool) -> dict[str, str]:  # called from the fuzzing thread; seeding runs in this loop
        made = asyncio.run_coroutine_threadsafe(seeded(server, customer, running), loop)
        seeds.append(made.result(SEED_TIMEOUT_S))
        return seeds[-1]

    run = asyncio.to_thread(fuzz, spec, server.http_url, server.token(customer), seed)
    try:
        failures = await asyncio.wait_for(run, RUN_TIMEOUT_S)
    finally:
        await stop_running(server, customer, seeds)
    assert not failures, "\n\n".join(failures)
