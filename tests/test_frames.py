"""Client frames and connection limits: PROTOCOL sections 1, 2 and 8."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from parley.store.tables import Message
from parley.uvicorn_ws import DirectSend
from tests.conftest import LiveServer, live_server, make_settings
from tests.invariants import Frame, TurnSummary, check_turn
from tests.wsclient import ChatClient, chat_frame

KIB = 1024


# -- helpers -----------------------------------------------------------------------------------------


async def message_count(server: LiveServer) -> int:
    async with server.store.engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(Message))
    return int(count or 0)


async def assert_frame_error_only(client: ChatClient, code: str) -> Frame:
    """The next frames are one frame-level error with ``code`` and then the pong of a probe ping.

    The server handles a connection's frames in order, so a ping sent after the bad frame proves that
    nothing else (no `working`, no second error) was sent in between.
    """
    await client.send({"type": "ping"})
    error = await client.receive()
    assert error["type"] == "error", error
    assert error["code"] == code and error["stage"] == "validation"
    assert isinstance(error["content"], str) and error["content"]
    assert "seq" not in error and "request_id" not in error
    pong = await client.receive()
    assert pong["type"] == "pong", f"expected only one error, then the pong; got {pong}"
    assert not client.turns
    return error


async def assert_usable(client: ChatClient) -> TurnSummary:
    turn = await client.turn(await client.chat("Still there?"))
    assert turn.status == "completed"
    return turn


async def only_turn(client: ChatClient) -> TurnSummary:
    """The one turn on this connection (for requests whose request_id the server made up)."""
    async with asyncio.timeout(15):
        while not (client.turns and all(client.finished(rid) for rid in client.turns)):
            await client.pump()
    assert len(client.turns) == 1, list(client.turns)
    (events,) = client.turns.values()
    return check_turn(events)


async def expect_close(client: ChatClient, timeout: float = 10) -> int:
    """Wait for the server to close the socket; return the close code it sent."""

    async def read_until_closed() -> None:
        while True:
            await client.receive(timeout)

    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(read_until_closed(), timeout)
    assert info.value.rcvd is not None, "the server closed the TCP connection without a close frame"
    return info.value.rcvd.code


def sized_chat_frame(total_bytes: int) -> str:
    """A valid chat request whose JSON text is exactly ``total_bytes`` bytes long."""
    frame = chat_frame("")
    base = len(orjson.dumps(frame))
    frame["user_input"]["prompt"] = "a" * (total_bytes - base)
    text = orjson.dumps(frame).decode()
    assert len(text.encode()) == total_bytes
    return text


# -- frames that are not JSON objects ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["hello", "{not json", "", "[1, 2, 3]", '"a string"', "42", "null", "true", "[]", '[{"type": "ping"}]'],
    ids=["text", "broken", "empty", "array", "string", "number", "null", "bool", "empty-array", "array-ping"],
)
async def test_non_object_frame_gets_one_invalid_json_error(sqlite_server: LiveServer, raw: str) -> None:
    async with await sqlite_server.client() as client:
        await client.ws.send(raw)
        await assert_frame_error_only(client, "invalid_json")
        await assert_usable(client)
    assert await message_count(sqlite_server) == 2  # only the follow-up turn stored anything


@pytest.mark.parametrize(
    "data", [b"\x00\x01binary", orjson.dumps(chat_frame("binary JSON")), b""], ids=["bytes", "json", "empty"]
)
async def test_binary_frame_gets_one_invalid_json_error(sqlite_server: LiveServer, data: bytes) -> None:
    async with await sqlite_server.client() as client:
        await client.ws.send(data)
        await assert_frame_error_only(client, "invalid_json")
        await assert_usable(client)


async def test_many_bad_frames_each_get_their_own_error(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        for raw in ("x", "[]", '"s"'):
            await client.ws.send(raw)
        for _ in range(3):
            error = await client.receive()
            assert (error["type"], error["code"]) == ("error", "invalid_json")
        await assert_usable(client)


# -- chat requests that are wrong --------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {},
        {"type": "bogus", "request_id": "r-bogus"},
        {"request_id": "r1", "user_input": {"prompt": 5}},
        {"request_id": "r2", "user_input": "Hi"},
        {"request_id": "r3", "user_input": {"prompt": [{"type": "image", "url": "x"}]}},
        {"request_id": "r4", "user_input": {"prompt": [{"type": "text", "text": 5}]}},
        {"request_id": "r5", "user_input": {"prompt": "Hi", "session_id": 12}},
        {"request_id": "r6", "user_input": {"prompt": "Hi", "chat_history": "none"}},
        {
            "request_id": "r7",
            "user_input": {"prompt": "Hi"},
            "user_settings": {"text": {"temperature": "hot"}},
        },
        {"request_id": "r8", "user_input": {"prompt": "Hi"}, "user_settings": {"text": {"max_tokens": "10"}}},
        {"request_id": "r9", "user_input": {"prompt": "Hi"}, "user_settings": {"text": {"options": []}}},
        {"request_id": "r10", "user_input": {"prompt": "Hi"}, "user_settings": "fast"},
        {"request_id": "r11", "user_input": {"prompt": "Hi"}, "request_type": "image"},
        {"request_id": "r12", "user_input": {"prompt": "Hi"}, "customer_id": [1]},
        {
            "request_id": "r13",
            "user_input": {"prompt": "Hi"},
            "user_settings": {"text": {"streaming": "yes"}},
        },
        {"request_id": "r14", "user_input": {"prompt": "Hi"}, "user_settings": {"text": {"temperature": 9}}},
    ],
    ids=lambda frame: str(frame.get("request_id", "empty")),
)
async def test_chat_request_with_wrong_types_gets_full_bracket(
    sqlite_server: LiveServer, frame: dict[str, Any]
) -> None:
    async with await sqlite_server.client() as client:
        await client.send(frame)
        turn = await only_turn(client)
        assert turn.status == "error" and turn.error is not None
        assert (turn.error["stage"], turn.error["code"]) == ("validation", "invalid_request")
        assert turn.kinds == ["working", "error", "fullProcessComplete"]
        if "request_id" in frame:
            assert turn.request_id == frame["request_id"]
        await assert_usable(client)
    assert await message_count(sqlite_server) == 2


@pytest.mark.parametrize(("sent", "echoed"), [(5, "5"), (2.5, "2.5")], ids=["int", "float"])
async def test_numeric_request_id_is_a_type_error_echoed_as_text(
    sqlite_server: LiveServer, sent: float, echoed: str
) -> None:
    """docs/protocol.md: a number is `invalid_request`, but its events carry it as text."""
    async with await sqlite_server.client() as client:
        await client.send({"request_id": sent, "user_input": {"prompt": "Hi"}})
        turn = await only_turn(client)
    assert turn.request_id == echoed
    assert turn.error is not None and turn.error["code"] == "invalid_request"


@pytest.mark.parametrize(
    "sent", [None, "", ["r"], {"id": "r"}, True], ids=["null", "empty", "list", "object", "bool"]
)
async def test_missing_or_unusable_request_id_gets_a_server_made_id(
    sqlite_server: LiveServer, sent: Any
) -> None:
    async with await sqlite_server.client() as client:
        await client.send({"request_id": sent, "user_input": {"prompt": "Hi"}})
        turn = await only_turn(client)
    assert len(turn.request_id) == 32 and all(c in "0123456789abcdef" for c in turn.request_id)
    if sent in (None, ""):
        assert turn.status == "completed"
    else:
        assert turn.error is not None and turn.error["code"] == "invalid_request"


async def test_unknown_type_with_a_valid_request_is_a_chat_request(sqlite_server: LiveServer) -> None:
    """`type` is not a chat request field: an unknown one is ignored like any unknown field."""
    frame = chat_frame("Hi") | {"type": "chat"}
    async with await sqlite_server.client() as client:
        await client.send(frame)
        turn = await client.turn(frame["request_id"])
    assert turn.status == "completed"


async def test_unknown_fields_are_ignored(sqlite_server: LiveServer) -> None:
    frame = chat_frame([{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}])
    frame["future_field"] = {"nested": [1, 2]}
    frame["user_input"]["attachments"] = []
    frame["user_settings"]["text"]["top_p"] = 0.5
    frame["user_settings"]["audio"] = {"voice": "x"}
    async with await sqlite_server.client() as client:
        await client.send(frame)
        turn = await client.turn(frame["request_id"])
    assert turn.status == "completed"


# -- frame size --------------------------------------------------------------------------------------


@pytest.fixture
async def small_frames_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path, max_frame_bytes=64 * KIB)) as live:
        yield live


async def test_oversized_frame_closes_with_1009(small_frames_server: LiveServer) -> None:
    async with await small_frames_server.client() as client:
        await client.ws.send(sized_chat_frame(100 * KIB))
        assert await expect_close(client) == 1009
    assert await message_count(small_frames_server) == 0


async def test_frame_one_byte_over_the_limit_closes_with_1009(small_frames_server: LiveServer) -> None:
    async with await small_frames_server.client() as client:
        await client.ws.send(sized_chat_frame(64 * KIB + 1))
        assert await expect_close(client) == 1009


async def test_oversized_binary_frame_closes_with_1009(small_frames_server: LiveServer) -> None:
    async with await small_frames_server.client() as client:
        await client.ws.send(b"\x00" * (100 * KIB))
        assert await expect_close(client) == 1009


@pytest.mark.parametrize("size", [64 * KIB, 64 * KIB - 100], ids=["exactly-the-limit", "just-under"])
async def test_frame_up_to_the_limit_is_accepted(small_frames_server: LiveServer, size: int) -> None:
    text = sized_chat_frame(size)
    async with await small_frames_server.client() as client:
        await client.ws.send(text)
        turn = await client.turn(orjson.loads(text)["request_id"])
        assert turn.status == "completed"
        await assert_usable(client)


async def test_default_frame_limit_is_one_mebibyte(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        # Exactly 1 MiB is a frame the server takes (the prompt itself is over its own limit).
        await client.ws.send(sized_chat_frame(1024 * KIB))
        turn = await only_turn(client)
        assert turn.error is not None and turn.error["code"] == "prompt_too_long"
        await client.ws.send(sized_chat_frame(1024 * KIB + 1))
        assert await expect_close(client) == 1009


# -- control frames ----------------------------------------------------------------------------------


async def test_ping_gets_pong(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        await client.send({"type": "ping", "extra": True})
        pong = await client.receive()
    assert pong["type"] == "pong" and isinstance(pong["timestamp"], str)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "cancel", "request_id": 5},
        {"type": "cancel", "request_id": ["a"]},
        {"type": "cancel", "request_id": {}},
    ],
    ids=["int", "list", "object"],
)
async def test_cancel_with_wrong_type_is_a_frame_error(sqlite_server: LiveServer, frame: Frame) -> None:
    async with await sqlite_server.client() as client:
        await client.send(frame)
        await assert_frame_error_only(client, "invalid_request")
        await assert_usable(client)


async def test_cancel_matching_nothing_is_ignored(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        await client.send({"type": "cancel", "request_id": "no-such-turn"})
        await client.send({"type": "cancel"})
        await client.send({"type": "ping"})
        assert (await client.receive())["type"] == "pong"
        await assert_usable(client)


async def test_close_session_sends_closing_then_closes_1000(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        await client.send({"type": "close_session"})
        closing = await client.next_other()
        assert closing["type"] == "closing"
        assert closing["reason"] == "client_request" and isinstance(closing["content"], str)
        assert await expect_close(client) == 1000


# -- idle timeout ------------------------------------------------------------------------------------


@pytest.fixture
async def impatient_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path, idle_timeout_s=0.3)) as live:
        yield live


async def test_idle_connection_gets_closing_timeout_then_1001(impatient_server: LiveServer) -> None:
    loop = asyncio.get_running_loop()
    async with await impatient_server.client() as client:
        started = loop.time()
        closing = await client.next_other(timeout=10)
        assert closing["type"] == "closing" and closing["reason"] == "timeout"
        assert await expect_close(client) == 1001
    assert loop.time() - started < 5


async def test_idle_timeout_does_not_fire_while_a_turn_streams(impatient_server: LiveServer) -> None:
    async with await impatient_server.client() as client:
        # About 1.5 s of streaming with 100 ms gaps: five idle timeouts long, and the client sends nothing.
        rid = await client.chat("Take your time", options={"chunks": 15, "delay_ms": 100})
        turn = await client.turn(rid)
        assert turn.status == "completed"
        assert len([k for k in turn.kinds if k == "text"]) == 15
        assert client.other == [], f"nothing but the turn was expected: {client.other}"
        # Once it is done and the client stays quiet, the idle timeout applies again.
        closing = await client.next_other(timeout=10)
        assert closing["reason"] == "timeout"
        assert await expect_close(client) == 1001


async def test_idle_timeout_counts_from_the_end_of_the_last_turn(impatient_server: LiveServer) -> None:
    """docs/protocol.md 3.7: idle means "no frames from the client and no turn running" for the whole
    timeout, so the clock starts again when the last turn ends, not at the client's last frame."""
    loop = asyncio.get_running_loop()
    async with await impatient_server.client() as client:
        rid = await client.chat("Half a second", options={"chunks": 5, "delay_ms": 100})
        assert (await client.turn(rid)).status == "completed"
        ended = loop.time()
        closing = await client.next_other(timeout=10)
        idle_for = loop.time() - ended
    assert closing["reason"] == "timeout"
    assert idle_for >= 0.25, f"closed {idle_for:.2f}s after the turn ended; the idle timeout is 0.3s"


async def test_idle_timeout_does_not_fire_while_requests_wait(impatient_server: LiveServer) -> None:
    async with await impatient_server.client() as client:
        slow = {"chunks": 5, "delay_ms": 100}
        first = await client.chat("one", options=slow)
        second = await client.chat("two", options=slow)
        assert (await client.turn(first)).status == "completed"
        assert (await client.turn(second)).status == "completed"
        assert client.other == []


# -- event dialect -----------------------------------------------------------------------------------


async def test_events_snake_gives_websocket_ready(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client(dialect="snake") as client:
        assert client.ready["type"] == "websocket_ready"
        assert client.ready["content"] == "Backend ready" and client.ready["connection_id"]
        turn = await client.turn(await client.chat("snake"))
    assert turn.status == "completed"
    assert turn.events[-1]["type"] == "tts_not_requested"


async def test_events_camel_gives_websocket_ready(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client(dialect="camel") as client:
        assert client.ready["type"] == "websocketReady"


@pytest.mark.parametrize("dialect", ["bogus", "Snake", "", "camel,snake"])
async def test_unknown_events_dialect_is_refused_before_upgrade(
    sqlite_server: LiveServer, dialect: str
) -> None:
    url = f"{sqlite_server.ws_url}?token={sqlite_server.token()}&events={dialect}"
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, open_timeout=10):
            pass
    assert info.value.response.status_code == 400
    assert orjson.loads(info.value.response.body or b"{}")["code"] == "invalid_request"


# -- a client that stops reading ---------------------------------------------------------------------


class StalledClient:
    """A WebSocket client on a raw socket with a tiny receive buffer that reads only when told to.

    No library buffers on its behalf: what the server sends stays in the kernel until ``drain``.
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, url: str, receive_buffer: int = 4096) -> StalledClient:
        loop = asyncio.get_running_loop()
        uri = parse_uri(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, (uri.host, uri.port))
        protocol = ClientProtocol(uri, max_size=None)
        protocol.send_request(protocol.connect())
        client = cls(sock, protocol)
        await client._flush()
        async with asyncio.timeout(10):
            while protocol.state is State.CONNECTING:
                data = await loop.sock_recv(sock, 256)
                assert data, "connection closed during the handshake"
                protocol.receive_data(data)
        events = protocol.events_received()
        assert isinstance(events[0], Response) and events[0].status_code == 101
        client._keep(events[1:])
        return client

    async def _flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def _keep(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, WsFrame) and event.opcode is Opcode.TEXT:
                self.frames.append(orjson.loads(event.data))

    async def send(self, frame: Frame) -> None:
        self.protocol.send_text(orjson.dumps(frame))
        await self._flush()

    async def drain(self, timeout: float) -> bool:
        """Read until the server closes the TCP connection; True if it did within ``timeout``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        data = await loop.sock_recv(self.sock, 256 * KIB)
                    except ConnectionResetError:
                        return True
                    if not data:
                        return True
                    self.protocol.receive_data(data)
                    self._keep(self.protocol.events_received())
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def strict_buffer_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    settings = make_settings(tmp_path, send_buffer_bytes=64 * KIB, send_stall_timeout_s=0.5)
    async with live_server(settings) as live:
        yield live


async def wait_for_answer(server: LiveServer, request_id: str, timeout: float) -> Message:
    """Poll the database until the turn's answer has a final status."""
    async with asyncio.timeout(timeout):
        while True:
            async with AsyncSession(server.store.engine) as db:
                row = await db.scalar(
                    select(Message).where(Message.request_id == request_id, Message.role == "assistant")
                )
            if row is not None and row.status != "streaming":
                return row
            await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` (something the server changes without telling us) for up to ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


FLOOD_TEXT = ("The quick brown fox jumps over the lazy dog. " * 5000)[: 200 * KIB]


async def flood_stalled_client(server: LiveServer) -> tuple[StalledClient, Any, str]:
    """Open a client that reads nothing and ask for a big answer; return it, the server-side protocol
    object of its connection and the request_id."""
    connections = server.server.server_state.connections
    client = await StalledClient.open(f"{server.ws_url}?token={server.token()}")
    assert len(connections) == 1
    (protocol,) = connections
    # Loopback kernel buffers grow to megabytes and would swallow the whole answer; keep the server
    # side's small too, as on a slow network, so the stall reaches the server's own buffers.
    protocol.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frame = chat_frame("Flood me", options={"chunks": 2000, "text": FLOOD_TEXT})
    await client.send(frame)
    return client, protocol, str(frame["request_id"])


async def test_slow_reader_turn_completes_and_memory_stays_bounded(strict_buffer_server: LiveServer) -> None:
    server = strict_buffer_server
    client, protocol, request_id = await flood_stalled_client(server)
    try:
        answer = await wait_for_answer(server, request_id, timeout=30)
        assert answer.status == "completed"
        assert answer.content == FLOOD_TEXT
        # What the server still holds for this client is bounded: at most about the transport's
        # high-water mark (64 KiB), far below the 200 KiB answer (some 400 KiB of events).
        assert protocol.transport.get_write_buffer_size() <= 96 * KIB
        assert await client.drain(timeout=10), "the connection did not end once the client read again"
    finally:
        client.close()
    received = "".join(f["content"] for f in client.frames if f.get("type") == "text")
    assert FLOOD_TEXT.startswith(received) and len(received) < len(FLOOD_TEXT), (
        "the client should miss the end"
    )
    assert not any(f.get("type") == "fullProcessComplete" for f in client.frames)


async def test_slow_reader_is_disconnected_by_the_server(strict_buffer_server: LiveServer) -> None:
    """PROTOCOL 8: "a slow client is disconnected". The server must let go of the socket (and its
    buffered bytes) by itself, without waiting for the client to read them."""
    server = strict_buffer_server
    connections = server.server.server_state.connections
    client, protocol, request_id = await flood_stalled_client(server)
    try:
        answer = await wait_for_answer(server, request_id, timeout=30)
        assert answer.status == "completed"
        dropped = await wait_until(lambda: not connections, timeout=5)
        assert dropped, (
            "the server still holds the slow client's connection 5 s after its turn ended: "
            f"transport closing={protocol.transport.is_closing()}, "
            f"{protocol.transport.get_write_buffer_size()} bytes unsent in its write buffer"
        )
    finally:
        client.close()


# -- sending -----------------------------------------------------------------------------------------


async def test_frames_go_straight_to_uvicorns_protocol(sqlite_server: LiveServer) -> None:
    """The outbox writes frames through uvicorn's websockets protocol directly (``DirectSend``): if a
    uvicorn upgrade renames what it relies on, it falls back to ASGI sends silently, and this fails."""
    async with await sqlite_server.client() as client:
        turn = await client.turn(await client.chat("direct", options={"chunks": 30}))
        outboxes = list(sqlite_server.runtime.supervisor.outboxes)
    assert turn.status == "completed"
    assert outboxes and all(isinstance(o._direct, DirectSend) for o in outboxes)  # type: ignore[attr-defined]


async def test_asgi_sends_when_the_server_is_not_uvicorn_sansio(
    sqlite_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DirectSend, "of", classmethod(lambda cls, websocket: None))
    async with await sqlite_server.client() as client:
        first = await client.turn(await client.chat("one", options={"chunks": 50}))
        second = await client.turn(await client.chat("two", options={"chunks": 5}))
        outboxes = list(sqlite_server.runtime.supervisor.outboxes)
    assert first.status == second.status == "completed"
    assert len([k for k in first.kinds if k == "text"]) == 50
    assert outboxes and all(o._direct is None for o in outboxes)  # type: ignore[attr-defined]
