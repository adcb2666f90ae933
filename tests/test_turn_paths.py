"""Every path a turn can take (PROTOCOL sections 2-4, 6, 8), checked on the wire and in the database.

Each collected turn goes through ``check_turn`` (PROTOCOL section 3). Persistence is read back from the
store (and over REST where it matters). Nothing here sleeps for a fixed time: tests wait for events or
poll the database in bounded loops.
"""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select

from parley.errors import ProviderFailed
from parley.providers.base import ProviderEvent, ProviderRequest
from parley.providers.demo import DemoProvider
from parley.store.tables import ChatSession, Message
from tests.conftest import LiveServer, live_server, make_settings
from tests.invariants import Frame, TurnSummary, check_turn, kind_of
from tests.wsclient import ChatClient, chat_frame

# Generous bounds: they only stop a broken server from hanging the suite.
TURN_TIMEOUT_S = 10.0
POLL_TIMEOUT_S = 5.0
POLL_STEP_S = 0.02

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Helpers


class LoggingClient(ChatClient):
    """A ``ChatClient`` that also keeps every frame in the order received, to check cross-turn order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[Frame] = []

    async def pump(self, timeout: float = TURN_TIMEOUT_S) -> Frame:
        frame = await super().pump(timeout)
        self.log.append(frame)
        return frame

    async def __aenter__(self) -> LoggingClient:
        return self


async def logging_client(server: LiveServer, customer_id: str | int = 1) -> LoggingClient:
    client = await LoggingClient.open(server.ws_url, server.token(customer_id))
    assert isinstance(client, LoggingClient)
    return client


def fresh_customer() -> str:
    """A customer no other test uses, so counting its rows is meaningful on the shared PostgreSQL."""
    return f"cust-{uuid.uuid4().hex[:16]}"


def deltas(summary: TurnSummary, kind: str = "text") -> list[str]:
    return [str(e["content"]) for e, k in zip(summary.events, summary.kinds, strict=True) if k == kind]


def blocks(order: list[str]) -> list[str]:
    """Request ids in order of runs: [a, a, b, b] -> [a, b]; interleaving shows as a repeated id."""
    return [rid for j, rid in enumerate(order) if j == 0 or order[j - 1] != rid]


def text_count(client: ChatClient, request_id: str) -> int:
    return sum(1 for e in client.turns.get(request_id, []) if kind_of(e, client.dialect) == "text")


async def pump_until_texts(client: ChatClient, request_id: str, count: int) -> None:
    """Pump until the turn has at least ``count`` text events."""
    async with asyncio.timeout(TURN_TIMEOUT_S):
        while text_count(client, request_id) < count:
            await client.pump()


async def rows(server: LiveServer, session_id: str | None) -> Sequence[Message]:
    assert session_id is not None
    return await server.store.session_messages(uuid.UUID(session_id))


async def stored_counts(server: LiveServer, customer_id: str) -> tuple[int, int]:
    """(sessions, messages) stored for a customer."""
    async with server.store.engine.connect() as conn:
        sessions = await conn.scalar(
            select(func.count()).select_from(ChatSession).where(ChatSession.customer_id == customer_id)
        )
        messages = await conn.scalar(
            select(func.count()).select_from(Message).where(Message.customer_id == customer_id)
        )
    return int(sessions or 0), int(messages or 0)


async def poll(
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = POLL_TIMEOUT_S
) -> T:
    """Read until ``done`` holds; fail after ``timeout``."""
    last: T | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await read()
                if done(last):
                    return last
                await asyncio.sleep(POLL_STEP_S)
    except TimeoutError:
        raise AssertionError(f"condition not reached within {timeout}s; last value: {last!r}") from None


def assistant_state(messages: Sequence[Message]) -> tuple[str, str]:
    """(status, content) of the session's last assistant row."""
    answer = [m for m in messages if m.role == "assistant"][-1]
    return answer.status, answer.content


async def normal_turn_works(client: ChatClient) -> TurnSummary:
    """The connection is still usable: a plain turn completes."""
    summary = await client.turn(await client.chat("still there?", options={"text": "yes", "chunks": 1}))
    assert summary.status == "completed"
    assert summary.text == "yes"
    return summary


# --------------------------------------------------------------------------------------------------
# 1. Success


async def test_success_events_deltas_and_persistence(server: LiveServer) -> None:
    async with await server.client() as client:
        rid = await client.chat("Say abcdef", options={"text": "abcdef", "chunks": 3})
        summary = await client.turn(rid)

    assert summary.status == "completed"
    assert summary.request_id == rid
    assert summary.kinds == ["working", "text", "text", "text", "dbOperationExecuted", "fullProcessComplete"]
    assert all(e["request_id"] == rid and isinstance(e["seq"], int) for e in summary.events)
    assert summary.events[0]["content"] == {"request_type": "text", "model": "demo", "provider": "demo"}
    # Deltas, never the accumulated text.
    assert deltas(summary) == ["ab", "cd", "ef"]
    assert summary.session_id is not None
    assert all(e["session_id"] == summary.session_id for e in summary.events[1:])
    # Usage: the demo model counts words of the context and its deltas.
    assert summary.usage == {"input_tokens": 2, "output_tokens": 3}

    stored = await rows(server, summary.session_id)
    assert [(m.role, m.content, m.status) for m in stored] == [
        ("user", "Say abcdef", "completed"),
        ("assistant", "abcdef", "completed"),
    ]
    user, answer = stored
    assert [str(user.id), str(answer.id)] == [summary.user_message_id, summary.ai_message_id]
    assert answer.usage == summary.usage
    assert answer.reasoning is None and answer.error_code is None
    assert user.request_id == answer.request_id == rid
    assert answer.model == "demo" and answer.provider == "demo"

    async with server.http() as http:
        response = await http.get(f"/api/v1/sessions/{summary.session_id}")
    assert response.status_code == 200
    messages = response.json()["messages"]
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "Say abcdef", "completed"),
        ("assistant", "abcdef", "completed"),
    ]
    assert messages[1]["usage"] == summary.usage


async def test_reasoning_streams_first_and_is_stored(server: LiveServer) -> None:
    async with await server.client() as client:
        rid = await client.chat(
            "think first", options={"text": "done!", "chunks": 2, "reasoning": "think about it"}
        )
        summary = await client.turn(rid)

    assert summary.status == "completed"
    assert summary.kinds == [
        "working",
        "reasoning",
        "reasoning",
        "reasoning",
        "text",
        "text",
        "dbOperationExecuted",
        "fullProcessComplete",
    ]
    assert deltas(summary, "reasoning") == ["think ", "about ", "it"]
    assert "".join(deltas(summary)) == "done!"
    assert all(e["session_id"] == summary.session_id for e in summary.events[1:])

    answer = (await rows(server, summary.session_id))[-1]
    assert (answer.role, answer.content, answer.reasoning, answer.status) == (
        "assistant",
        "done!",
        "think about it",
        "completed",
    )
    async with server.http() as http:
        body = (await http.get(f"/api/v1/sessions/{summary.session_id}")).json()
    assert body["messages"][1]["reasoning"] == "think about it"


@pytest.mark.parametrize("request_id", [None, ""], ids=["absent", "empty"])
async def test_server_makes_up_a_request_id(server: LiveServer, request_id: str | None) -> None:
    frame = chat_frame("no id", options={"text": "abc", "chunks": 3})
    if request_id is None:
        del frame["request_id"]
    else:
        frame["request_id"] = request_id
    async with await server.client() as client:
        await client.send(frame)
        async with asyncio.timeout(TURN_TIMEOUT_S):
            while (await client.pump())["type"] != "fullProcessComplete":
                pass
        assert client.other == []
        assert len(client.turns) == 1, f"events under several request ids: {list(client.turns)}"
        made_up = next(iter(client.turns))
        summary = check_turn(client.turns[made_up])

    assert made_up, "the server must make up a non-empty request_id"
    assert summary.status == "completed" and summary.text == "abc"
    assert all(e["request_id"] == made_up for e in summary.events)
    stored = await rows(server, summary.session_id)
    assert [m.request_id for m in stored] == [made_up, made_up]


# --------------------------------------------------------------------------------------------------
# 2. Cancel


@pytest.mark.parametrize("named", [True, False], ids=["by-request-id", "without-request-id"])
async def test_cancel_mid_stream(server: LiveServer, named: bool) -> None:
    loop = asyncio.get_running_loop()
    async with await server.client() as client:
        # 200 deltas x 20 ms: about 4 s of streaming, far longer than the cancel may take.
        rid = await client.chat("a long one", options={"chunks": 200, "delay_ms": 20})
        await client.wait_for(rid, "text")
        await pump_until_texts(client, rid, 3)
        started = loop.time()
        await client.send({"type": "cancel", "request_id": rid} if named else {"type": "cancel"})
        summary = await client.turn(rid, timeout=2.0)
        elapsed = loop.time() - started
        assert client.other == []

    assert summary.status == "cancelled"
    assert summary.kinds[-3:] == ["cancelled", "dbOperationExecuted", "fullProcessComplete"]
    cancelled_at = summary.kinds.index("cancelled")
    assert "text" not in summary.kinds[cancelled_at:]
    assert summary.events[cancelled_at]["content"] == "Request cancelled"
    sent = deltas(summary)
    assert 3 <= len(sent) < 200
    assert elapsed < 2.0, f"cancel took {elapsed:.2f}s"
    assert json.loads(summary.events[-2]["content"])["status"] == "cancelled"

    answer = (await rows(server, summary.session_id))[-1]
    assert str(answer.id) == summary.ai_message_id
    assert answer.status == "cancelled"
    # Invariant 11: exactly the deltas sent, no more, no less.
    assert answer.content == "".join(sent)
    assert answer.error_code is None
    assert answer.usage == summary.usage


class SwallowingDemo(DemoProvider):
    """The demo model behind an SDK that turns a cancellation into an error of its own (some do)."""

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        try:
            async for event in super().stream(request):
                yield event
        except asyncio.CancelledError:
            raise ProviderFailed("the SDK's own error for a cancelled read") from None


async def test_cancel_holds_when_the_provider_swallows_the_cancellation(sqlite_server: LiveServer) -> None:
    """A plain turn streams in the turn's own task and a cancel cancels that task (then takes it back):
    a provider that eats the cancellation must still end the turn as cancelled, stored as sent, with no
    cancellation left over to break the final write or the next turn on the connection."""
    registry = sqlite_server.runtime.services.registry
    registry._built["demo"] = SwallowingDemo()
    async with await sqlite_server.client() as client:
        rid = await client.chat("a long one", options={"chunks": 200, "delay_ms": 20})
        await pump_until_texts(client, rid, 3)
        await client.send({"type": "cancel", "request_id": rid})
        summary = await client.turn(rid, timeout=TURN_TIMEOUT_S)
        await normal_turn_works(client)
    assert summary.status == "cancelled"
    assert summary.kinds[-3:] == ["cancelled", "dbOperationExecuted", "fullProcessComplete"]
    answer = (await rows(sqlite_server, summary.session_id))[-1]
    assert answer.status == "cancelled" and answer.content == "".join(deltas(summary))


async def test_cancel_during_reasoning_keeps_the_reasoning_sent(server: LiveServer) -> None:
    thoughts = " ".join(f"w{i}" for i in range(100))
    async with await server.client() as client:
        rid = await client.chat(
            "think long", options={"text": "never shown", "reasoning": thoughts, "delay_ms": 20}
        )
        async with asyncio.timeout(TURN_TIMEOUT_S):
            while sum(1 for e in client.turns.get(rid, []) if e["type"] == "reasoning") < 2:
                await client.pump()
        await client.send({"type": "cancel", "request_id": rid})
        summary = await client.turn(rid, timeout=2.0)

    assert summary.status == "cancelled"
    assert "text" not in summary.kinds
    sent = deltas(summary, "reasoning")
    assert 2 <= len(sent) < 100
    answer = (await rows(server, summary.session_id))[-1]
    assert (answer.status, answer.content, answer.reasoning) == ("cancelled", "", "".join(sent))


async def test_cancel_for_unknown_request_is_ignored(server: LiveServer) -> None:
    async with await server.client() as client:
        rid = await client.chat("finish me", options={"text": "abcde", "chunks": 5, "delay_ms": 20})
        await client.wait_for(rid, "text")
        await client.send({"type": "cancel", "request_id": "no-such-request"})
        # A ping after the cancel: its pong must be the first non-turn frame (nothing came back for cancel).
        await client.send({"type": "ping"})
        pong = await client.next_other()
        assert pong["type"] == "pong"
        summary = await client.turn(rid)
        assert client.other == []

    assert summary.status == "completed"
    assert summary.text == "abcde"
    assert (await rows(server, summary.session_id))[-1].status == "completed"


async def test_malformed_cancel_is_a_frame_error_and_the_turn_goes_on(server: LiveServer) -> None:
    async with await server.client() as client:
        rid = await client.chat("finish me", options={"text": "abcde", "chunks": 5, "delay_ms": 20})
        await client.wait_for(rid, "text")
        await client.send({"type": "cancel", "request_id": 5})
        error = await client.next_other()
        summary = await client.turn(rid)
        assert client.other == []

    assert error["type"] == "error" and error["code"] == "invalid_request"
    assert "seq" not in error
    assert summary.status == "completed" and summary.text == "abcde"


async def test_cancel_a_queued_request(server: LiveServer) -> None:
    async with await logging_client(server) as client:
        first = await client.chat("first", options={"text": "x" * 20, "chunks": 20, "delay_ms": 20})
        second = await client.chat("second, never answered", options={"text": "never", "chunks": 1})
        await client.wait_for(first, "text")
        await client.send({"type": "cancel", "request_id": second})
        one = await client.turn(first)
        two = await client.turn(second)
        order = [e["request_id"] for e in client.log if "seq" in e]

    # The cancel named the queued request; the running one is untouched.
    assert one.status == "completed" and one.text == "x" * 20
    # Observed (and documented in docs/protocol.md 3.3): the queued turn still runs its bracket when its
    # time comes, stores the question, and stores an empty answer with status `cancelled`.
    assert two.status == "cancelled"
    assert two.kinds == ["working", "cancelled", "dbOperationExecuted", "fullProcessComplete"]
    assert blocks(order) == [first, second], f"queued turn interleaved: {order}"

    stored = await rows(server, two.session_id)
    assert [(m.role, m.content, m.status) for m in stored] == [
        ("user", "second, never answered", "completed"),
        ("assistant", "", "cancelled"),
    ]
    assert [str(m.id) for m in stored] == [two.user_message_id, two.ai_message_id]


# --------------------------------------------------------------------------------------------------
# 3. Provider failure


@pytest.mark.parametrize(("fail_after", "expected"), [(3, "abc"), (0, "")], ids=["after-3", "at-once"])
async def test_provider_failure(server: LiveServer, fail_after: int, expected: str) -> None:
    async with await server.client() as client:
        rid = await client.chat(
            "fail please", options={"text": "abcdefghij", "chunks": 10, "fail_after": fail_after}
        )
        summary = await client.turn(rid)

    assert summary.status == "error"
    assert summary.kinds == [
        "working",
        *["text"] * fail_after,
        "error",
        "dbOperationExecuted",
        "fullProcessComplete",
    ]
    assert summary.error is not None
    assert (summary.error["stage"], summary.error["code"]) == ("provider", "provider_error")
    assert deltas(summary) == list(expected)
    assert json.loads(summary.events[-2]["content"])["status"] == "error"

    stored = await rows(server, summary.session_id)
    assert [(m.role, m.status) for m in stored] == [("user", "completed"), ("assistant", "error")]
    assert stored[1].content == expected
    assert stored[1].error_code == "provider_error"
    assert str(stored[1].id) == summary.ai_message_id

    async with server.http() as http:
        body = (await http.get(f"/api/v1/sessions/{summary.session_id}")).json()
    assert [(m["status"], m["content"]) for m in body["messages"]] == [
        ("completed", "fail please"),
        ("error", expected),
    ]


# --------------------------------------------------------------------------------------------------
# 4. Refused before the model is called


def _with(path: tuple[str, ...], value: Any, *, delete: bool = False) -> Frame:
    """A valid chat frame with one field set (or deleted) at ``path``."""
    frame = chat_frame("valid prompt", options={"text": "ok", "chunks": 1})
    target: dict[str, Any] = frame
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return frame


REFUSALS: list[tuple[str, Frame, str, str]] = [
    ("empty-prompt", _with(("user_input", "prompt"), ""), "validation", "prompt_required"),
    ("blank-prompt", _with(("user_input", "prompt"), "   "), "validation", "prompt_required"),
    ("no-parts", _with(("user_input", "prompt"), []), "validation", "prompt_required"),
    (
        "blank-part",
        _with(("user_input", "prompt"), [{"type": "text", "text": " \n "}]),
        "validation",
        "prompt_required",
    ),
    ("prompt-too-long", _with(("user_input", "prompt"), "x" * 100_001), "limits", "prompt_too_long"),
    (
        "unknown-model",
        _with(("user_settings", "text", "model"), "no-such-model"),
        "validation",
        "unknown_model",
    ),
    (
        "unconfigured-provider",
        _with(("user_settings", "text", "model"), "gpt-4o-mini"),
        "validation",
        "provider_not_configured",
    ),
    (
        "temperature-str",
        _with(("user_settings", "text", "temperature"), "hot"),
        "validation",
        "invalid_request",
    ),
    ("prompt-int", _with(("user_input", "prompt"), 42), "validation", "invalid_request"),
    (
        "chunks-str",
        _with(("user_settings", "text", "options"), {"chunks": "x"}),
        "validation",
        "invalid_request",
    ),
    ("no-user-input", _with(("user_input",), None, delete=True), "validation", "invalid_request"),
    ("session-id-int", _with(("user_input", "session_id"), 5), "validation", "invalid_request"),
    ("other-customer-int", _with(("customer_id",), 1), "auth", "forbidden"),
    ("other-customer-str", _with(("customer_id",), "someone-else"), "auth", "forbidden"),
]


@pytest.mark.parametrize(
    ("frame", "stage", "code"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS]
)
async def test_refused_request(server: LiveServer, frame: Frame, stage: str, code: str) -> None:
    assert not server.settings.dev  # `gpt-4o-mini` must not fall back to the demo model
    customer = fresh_customer()
    async with await server.client(customer) as client:
        await client.send(frame)
        summary = await client.turn(str(frame["request_id"]))
        assert client.other == []

        assert summary.status == "error"
        assert summary.kinds == ["working", "error", "fullProcessComplete"]
        assert summary.error is not None
        assert (summary.error["stage"], summary.error["code"]) == (stage, code)
        assert summary.error["content"]
        assert "session_id" not in summary.events[-1]
        assert await stored_counts(server, customer) == (0, 0), "a refused request stored something"

        # The connection stays open and usable.
        ok = await normal_turn_works(client)
    assert await stored_counts(server, customer) == (1, 2)
    assert ok.session_id is not None


async def test_refused_model_names_no_provider(server: LiveServer) -> None:
    async with await server.client() as client:
        unknown = await client.turn(await client.chat("hi", model="no-such-model"))
        unconfigured = await client.turn(await client.chat("hi", model="gpt-4o-mini"))
    assert unknown.events[0]["content"] == {
        "request_type": "text",
        "model": "no-such-model",
        "provider": None,
    }
    assert unconfigured.events[0]["content"]["provider"] is None
    assert unconfigured.error is not None and "OPENAI_API_KEY" in unconfigured.error["content"]


async def test_accepted_edge_requests(server: LiveServer) -> None:
    """customer_id equal to the token's (int or str), a prompt exactly at the limit, parts, null session."""
    frames: list[tuple[Frame, str]] = []
    for customer_id in (1, "1"):
        frame = chat_frame(f"as customer {customer_id!r}", options={"text": "ok", "chunks": 1})
        frame["customer_id"] = customer_id
        frames.append((frame, f"as customer {customer_id!r}"))
    frames.append((chat_frame("y" * 100_000, options={"text": "ok", "chunks": 1}), "y" * 100_000))
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    frames.append((chat_frame(parts, options={"text": "ok", "chunks": 1}), "Hello\n\nworld"))
    null_session = chat_frame("null session", options={"text": "ok", "chunks": 1})
    null_session["user_input"]["session_id"] = None
    frames.append((null_session, "null session"))

    async with await server.client(1) as client:
        for frame, prompt in frames:
            await client.send(frame)
            summary = await client.turn(str(frame["request_id"]))
            assert summary.status == "completed", summary.error
            stored = await rows(server, summary.session_id)
            assert [(m.role, m.status) for m in stored] == [("user", "completed"), ("assistant", "completed")]
            assert stored[0].content == prompt


# --------------------------------------------------------------------------------------------------
# 5. Sessions of other customers


async def test_foreign_malformed_and_unknown_sessions(server: LiveServer) -> None:
    owner, intruder = fresh_customer(), fresh_customer()
    async with await server.client(owner) as client:
        mine = await client.turn(await client.chat("my secret session"))
    assert mine.session_id is not None

    async with await server.client(intruder) as client:
        for session_id in (mine.session_id, "not-a-uuid", str(uuid.uuid4())):
            summary = await client.turn(await client.chat("let me in", session_id=session_id))
            assert summary.kinds == ["working", "error", "fullProcessComplete"], session_id
            assert summary.error is not None
            assert (summary.error["stage"], summary.error["code"]) == ("validation", "session_not_found")
            assert "my secret session" not in summary.error["content"]
        await normal_turn_works(client)

    stored = await rows(server, mine.session_id)
    assert [(m.role, m.status) for m in stored] == [("user", "completed"), ("assistant", "completed")]
    assert await stored_counts(server, owner) == (1, 2)
    assert await stored_counts(server, intruder) == (1, 2)  # only its own successful turn
    async with server.http(intruder) as http:
        assert (await http.get(f"/api/v1/sessions/{mine.session_id}")).status_code == 404


# --------------------------------------------------------------------------------------------------
# 6. Disconnect mid-stream is a detach


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_disconnect_mid_stream_is_a_detach(server: LiveServer, how: str) -> None:
    answer = "".join(chr(ord("a") + i % 26) for i in range(30))
    client = await server.client()
    try:
        rid = await client.chat("keep going", options={"text": answer, "chunks": 30, "delay_ms": 20})
        first = await client.wait_for(rid, "text")
        await pump_until_texts(client, rid, 3)
        session_id = str(first["session_id"])
    finally:
        if how == "abort":
            client.ws.transport.abort()
        await client.close()
    assert not client.finished(rid)

    stored = await poll(lambda: rows(server, session_id), lambda r: assistant_state(r)[0] != "streaming")
    assert [(m.role, m.status) for m in stored] == [("user", "completed"), ("assistant", "completed")]
    assert stored[1].content == answer
    assert stored[1].usage is not None and stored[1].usage["output_tokens"] == 30


@pytest.fixture
async def checkpoint_each_second(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path, checkpoint_interval_s=1.0)) as live:
        yield live


async def test_streaming_row_and_checkpoint(checkpoint_each_second: LiveServer) -> None:
    server = checkpoint_each_second
    loop = asyncio.get_running_loop()
    answer = "".join(chr(ord("A") + i % 26) for i in range(60))
    async with await server.client() as client:
        # 60 deltas x 50 ms: about 3 s, with checkpoints about once a second.
        started = loop.time()
        rid = await client.chat("checkpoint me", options={"text": answer, "chunks": 60, "delay_ms": 50})
        first = await client.wait_for(rid, "text")
        session_id = str(first["session_id"])

        # Invariant 3 and 10: question and an empty `streaming` answer row exist before the first delta.
        stored = await rows(server, session_id)
        assert [(m.role, m.status) for m in stored] == [("user", "completed"), ("assistant", "streaming")]
        assert stored[0].content == "checkpoint me"

        checkpointed = await poll(
            lambda: rows(server, session_id), lambda r: assistant_state(r)[1] != "", timeout=2.5
        )
        seen_after = loop.time() - started
        status, partial = assistant_state(checkpointed)
        assert status == "streaming", "the checkpoint must keep the row streaming"
        assert answer.startswith(partial) and len(partial) < len(answer)
        # No per-token writes: nothing is stored before the first checkpoint interval (1 s) has passed
        # since the request was sent (the interval starts later, when the model is called).
        assert seen_after > 0.9, f"answer content stored after {seen_after:.2f}s: per-token writes?"

        summary = await client.turn(rid)
    assert summary.status == "completed" and summary.text == answer
    assert assistant_state(await rows(server, session_id)) == ("completed", answer)


# --------------------------------------------------------------------------------------------------
# 7. Queue


async def test_queued_requests_run_one_at_a_time_in_order(server: LiveServer) -> None:
    async with await logging_client(server) as client:
        rids = [
            await client.chat(f"queued {i}", options={"text": f"answer{i}", "chunks": 5, "delay_ms": 10})
            for i in range(3)
        ]
        summaries = [await client.turn(rid) for rid in rids]
        order = [e["request_id"] for e in client.log if "seq" in e]

    for i, summary in enumerate(summaries):
        assert summary.status == "completed"
        assert summary.text == f"answer{i}"
    # No interleaving: turn i's events form one block, and the blocks come in the order sent.
    assert blocks(order) == rids, f"turns interleaved or out of order: {order}"
    for summary in summaries:
        stored = await rows(server, summary.session_id)
        assert [m.status for m in stored] == ["completed", "completed"]


async def test_queue_limit(server: LiveServer) -> None:
    customer = fresh_customer()
    limit = server.settings.max_queued_requests
    assert limit == 8
    tiny = {"text": "q", "chunks": 1}
    async with await logging_client(server, customer) as client:
        long = await client.chat("long", options={"chunks": 100, "delay_ms": 20})
        await client.wait_for(long, "text")
        queued = [await client.chat(f"queued {i}", options=tiny) for i in range(limit)]
        extra = [await client.chat(f"extra {i}", options=tiny) for i in range(2)]

        refused = [await client.turn(rid) for rid in extra]
        assert not client.finished(long), "the extra requests must be refused at once, not after the queue"
        for summary in refused:
            assert summary.kinds == ["working", "error", "fullProcessComplete"]
            assert summary.error is not None
            assert (summary.error["stage"], summary.error["code"]) == ("limits", "too_many_requests")
        assert not any(client.turns.get(rid) for rid in queued), "a queued request started early"

        await client.send({"type": "cancel", "request_id": long})
        cancelled = await client.turn(long)
        done = [await client.turn(rid) for rid in queued]
        order = [e["request_id"] for e in client.log if "seq" in e and e["request_id"] not in extra]

    assert cancelled.status == "cancelled"
    assert [s.status for s in done] == ["completed"] * limit
    assert all(s.text == "q" for s in done)
    assert blocks(order) == [long, *queued]
    # The long turn and the 8 queued ones are stored; the 2 refused ones are not.
    assert await stored_counts(server, customer) == (1 + limit, 2 * (1 + limit))


# --------------------------------------------------------------------------------------------------
# 8. Control frames mid-stream


async def test_ping_mid_stream(server: LiveServer) -> None:
    async with await server.client() as client:
        rid = await client.chat("stream on", options={"chunks": 50, "delay_ms": 20})
        await client.wait_for(rid, "text")
        before = datetime.now(UTC)
        await client.send({"type": "ping"})
        pong = await client.next_other()
        assert not client.finished(rid), "pong came only after the turn ended"
        summary = await client.turn(rid)

    assert pong["type"] == "pong"
    assert "seq" not in pong and "request_id" not in pong
    stamp = datetime.fromisoformat(pong["timestamp"])
    assert stamp.utcoffset() is not None and stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((stamp - before).total_seconds()) < 5
    assert summary.status == "completed"


# --------------------------------------------------------------------------------------------------
# 9. The snake dialect


def wire_types(summary: TurnSummary) -> list[str]:
    return [str(e["type"]) for e in summary.events]


async def test_snake_success_and_reasoning(server: LiveServer) -> None:
    async with await server.client(dialect="snake") as client:
        assert client.ready["type"] == "websocket_ready"
        assert client.ready["content"] == "Backend ready"
        rid = await client.chat("snake", options={"text": "abcd", "chunks": 2, "reasoning": "hmm yes"})
        summary = await client.turn(rid)

    assert summary.status == "completed"
    assert wire_types(summary) == [
        "working",
        "thinking_chunk",
        "thinking_chunk",
        "text_chunk",
        "text_chunk",
        "db_operation_executed",
        "text_completed",
        "tts_not_requested",
    ]
    assert deltas(summary) == ["ab", "cd"]
    assert deltas(summary, "reasoning") == ["hmm ", "yes"]
    completed, tts = summary.events[-2:]
    assert tts["seq"] == completed["seq"] + 1
    for frame in (completed, tts):
        assert frame["status"] == "completed"
        assert frame["request_id"] == rid
        assert frame["session_id"] == summary.session_id
    assert all(e["session_id"] == summary.session_id for e in summary.events[1:])
    db = json.loads(summary.events[-3]["content"])
    assert db["status"] == "completed" and db["session_id"] == summary.session_id

    answer = (await rows(server, summary.session_id))[-1]
    assert (answer.content, answer.reasoning, answer.status) == ("abcd", "hmm yes", "completed")


async def test_snake_cancel_failure_and_refusal(server: LiveServer) -> None:
    async with await server.client(dialect="snake") as client:
        rid = await client.chat("cancel me", options={"chunks": 200, "delay_ms": 20})
        await client.wait_for(rid, "text")
        await client.send({"type": "cancel", "request_id": rid})
        cancelled = await client.turn(rid, timeout=2.0)

        failed = await client.turn(
            await client.chat("fail", options={"text": "abcdef", "chunks": 6, "fail_after": 2})
        )
        refused = await client.turn(await client.chat(""))
        assert client.other == []

    assert cancelled.status == "cancelled"
    assert wire_types(cancelled)[-4:] == [
        "cancelled",
        "db_operation_executed",
        "text_completed",
        "tts_not_requested",
    ]
    stored = (await rows(server, cancelled.session_id))[-1]
    assert (stored.status, stored.content) == ("cancelled", cancelled.text)

    assert failed.status == "error"
    assert wire_types(failed) == [
        "working",
        "text_chunk",
        "text_chunk",
        "stream_error",
        "db_operation_executed",
        "text_completed",
        "tts_not_requested",
    ]
    assert failed.error is not None and failed.error["code"] == "provider_error"
    stored = (await rows(server, failed.session_id))[-1]
    assert (stored.status, stored.content, stored.error_code) == ("error", "ab", "provider_error")

    assert wire_types(refused) == ["working", "error", "text_completed", "tts_not_requested"]
    assert refused.error is not None
    assert (refused.error["stage"], refused.error["code"]) == ("validation", "prompt_required")
    assert [e["seq"] for e in refused.events] == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------------
# 10. Two connections of one customer


async def test_two_connections_stream_at_once_without_mixing(server: LiveServer) -> None:
    customer = fresh_customer()
    answers = ("A" * 30, "b" * 30)
    async with await server.client(customer) as one, await server.client(customer) as two:
        r1 = await one.chat("first", options={"text": answers[0], "chunks": 30, "delay_ms": 20})
        await one.wait_for(r1, "text")
        r2 = await two.chat("second", options={"text": answers[1], "chunks": 30, "delay_ms": 20})
        await two.wait_for(r2, "text")
        assert not one.finished(r1), "the two turns did not overlap"
        s1, s2 = await asyncio.gather(one.turn(r1), two.turn(r2))
        assert list(one.turns) == [r1] and list(two.turns) == [r2]

    assert (s1.status, s2.status) == ("completed", "completed")
    assert (s1.text, s2.text) == answers
    assert s1.session_id != s2.session_id
    for summary, prompt, answer in ((s1, "first", answers[0]), (s2, "second", answers[1])):
        stored = await rows(server, summary.session_id)
        assert [(m.role, m.content, m.status) for m in stored] == [
            ("user", prompt, "completed"),
            ("assistant", answer, "completed"),
        ]
    assert await stored_counts(server, customer) == (2, 4)


async def test_numeric_request_id_is_refused_but_echoed_as_text(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        frame = chat_frame("hello")
        frame["request_id"] = 5
        await client.send(frame)
        refused = await client.turn("5")
        assert refused.status == "error"
        assert refused.error is not None
        assert refused.error["code"] == "invalid_request"
        assert "request_id" in refused.error["content"]


async def test_nul_characters_are_refused_in_stored_text(server: LiveServer) -> None:
    async with await server.client() as client:
        refused = await client.turn(await client.chat("bad\x00prompt"))
        assert refused.error is not None
        assert refused.error["code"] == "invalid_request"
        assert "NUL" in refused.error["content"]
        sent = await client.turn(await client.chat("model says NUL", options={"text": "a\x00b", "chunks": 1}))
    assert sent.status == "completed"
    assert sent.text == "a\ufffdb"
    rows = await server.store.session_messages(uuid.UUID(sent.session_id or ""))
    assert rows[1].content == sent.text


@pytest.mark.parametrize("end", ["completed", "cancelled", "error", "agentic"])
async def test_an_ended_turn_is_freed_at_once_without_the_cycle_collector(
    sqlite_server: LiveServer, end: str
) -> None:
    """Nothing the turn leaves behind (its log, kept for resume; the emitter's hooks) refers back to it: a
    cycle would keep every ended turn for the cyclic GC, whose passes grow with the live heap (at 100
    streams metrics' first-text hook, a bound method, cost 3-10% CPU per delta that way)."""
    options: dict[str, Any] = {"chunks": 60, "delay_ms": 5}
    extra: dict[str, Any] = {}
    if end == "error":
        options["fail_after"] = 20
    if end == "agentic":  # a tool step, then the answer
        options["tool_steps"] = [[{"name": "calculator", "arguments": {"expression": "6 * 7"}}]]
        extra["tools"] = ["calculator"]
    async with await sqlite_server.client("freed") as client:
        await client.events(await client.chat("warm up", options={"chunks": 3}))
        rid = await client.chat("Count", options=options, **extra)
        await client.wait_for(rid, "text")
        (turn,) = sqlite_server.runtime.supervisor.running
        ref = weakref.ref(turn)
        freed = asyncio.Event()
        loop = asyncio.get_running_loop()
        weakref.finalize(turn, loop.call_soon_threadsafe, freed.set)
        del turn
        gc.disable()
        try:
            if end == "cancelled":
                await client.send({"type": "cancel", "request_id": rid})
            status = check_turn(await client.events(rid)).status
            assert status == ("completed" if end == "agentic" else end)
            try:  # its task ends just after its last event: then its last reference goes
                await asyncio.wait_for(freed.wait(), 2)
            except TimeoutError:
                held = [type(r).__name__ for r in gc.get_referrers(ref())] if ref() is not None else []
                pytest.fail(f"the ended turn is still referred to by {held}")
        finally:
            gc.enable()
