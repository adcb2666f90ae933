"""The server's edge, before the app sees a request: head sizes, half-open handshakes, and what it logs.

Real server on a free port; a real ``websockets`` client, and raw sockets where a client library would not
send what an attacker does (half a head, more headers than allowed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from parley.uvicorn_ws import MAX_HEAD_BYTES
from tests.conftest import SECRET, LiveServer, live_server, make_settings
from tests.wsclient import ChatClient

READ_TIMEOUT_S = 10.0


def padded_token(customer_id: str, length: int) -> str:
    """A valid HS256 token at least ``length`` characters long (an identity provider's, with many claims)."""
    now = int(time.time())
    claims: dict[str, Any] = {"customer_id": customer_id, "iat": now, "exp": now + 600}
    claims["groups"] = "g" * (length * 3 // 4)
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert len(token) >= length
    return token


async def refusal(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Open ``url``; assert the server refuses the upgrade; return the HTTP status and the JSON body."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, open_timeout=READ_TIMEOUT_S, **kwargs):
            pass
    body: dict[str, Any] = orjson.loads(info.value.response.body or b"null")
    return info.value.response.status_code, body


async def exchange(port: int, head: bytes) -> bytes:
    """Send ``head`` on a raw socket and read until the server closes it; everything it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await reader.read()
    finally:
        writer.close()


def upgrade_head(path: str, *headers: str, end: bool = True) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n" + ("\r\n" if end else "")).encode()


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    parsed: dict[str, Any] = orjson.loads(body)
    return int(head.split(b" ", 2)[1]), parsed


# -- large heads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["query", "header"])
async def test_a_16_kib_token_opens_a_websocket(sqlite_server: LiveServer, where: str) -> None:
    """Identity providers' tokens pass 8 KiB (websockets' line limit): the server used to answer nothing."""
    token = padded_token("3", 16 * 1024)
    if where == "query":
        client = await ChatClient.open(sqlite_server.ws_url, token)
    else:
        headers = {"Authorization": f"Bearer {token}"}
        client = await ChatClient.open(sqlite_server.ws_url, None, additional_headers=headers)
    async with client:
        turn = await client.turn(await client.chat("Hello with a large token"))
    assert turn.status == "completed" and turn.session_id is not None
    assert await sqlite_server.store.find_session("3", turn.session_id) is not None


async def test_a_16_kib_token_works_over_rest(sqlite_server: LiveServer) -> None:
    async with sqlite_server.http(None) as http:
        response = await http.get(
            "/api/v1/sessions", headers={"Authorization": f"Bearer {padded_token('3', 16 * 1024)}"}
        )
    assert response.status_code == 200


async def test_a_request_line_over_the_limit_gets_414_and_a_close(sqlite_server: LiveServer) -> None:
    token = padded_token("1", MAX_HEAD_BYTES + 1024)
    status, body = await refusal(f"{sqlite_server.ws_url}?token={token}")
    assert (status, body["code"]) == (414, "request_line_too_long")
    assert token not in body["detail"]

    answer = await exchange(sqlite_server.port, upgrade_head(f"/chat/ws?token={token}"))
    assert status_and_body(answer) == (414, body)  # and then the server closed the connection

    # A request line that never ends is answered once it passes the limit.
    endless = f"GET /chat/ws?token={token}".encode()
    assert status_and_body(await exchange(sqlite_server.port, endless)) == (414, body)


async def test_headers_over_the_limit_get_431_and_a_close(sqlite_server: LiveServer) -> None:
    token = padded_token("1", MAX_HEAD_BYTES + 1024)
    headers = {"Authorization": f"Bearer {token}"}
    status, body = await refusal(sqlite_server.ws_url, additional_headers=headers)
    assert (status, body["code"]) == (431, "headers_too_large")

    answer = await exchange(sqlite_server.port, upgrade_head("/chat/ws", f"Authorization: Bearer {token}"))
    assert status_and_body(answer) == (431, body)
    # A header that never ends (httptools buffers a header whole): answered once the head passes the limit.
    endless = upgrade_head("/chat/ws", end=False) + f"Authorization: Bearer {token}".encode()
    assert status_and_body(await exchange(sqlite_server.port, endless)) == (431, body)

    # The same limit for REST, whose heads uvicorn's httptools protocol read at any size.
    async with sqlite_server.http(None) as http:
        response = await http.get("/healthz", headers=headers)
    assert response.status_code == 431 and response.json()["code"] == "headers_too_large"


async def test_too_many_headers_in_an_upgrade_get_431(sqlite_server: LiveServer) -> None:
    """websockets refuses more than 128 headers and queues a 431 that uvicorn never wrote."""
    extra = [f"X-Filler-{i}: {i}" for i in range(200)]
    head = upgrade_head(f"/chat/ws?token={sqlite_server.token()}", *extra)
    answer = await exchange(sqlite_server.port, head)
    status, body = status_and_body(answer)
    assert (status, body["code"]) == (431, "headers_too_large")


# -- half-open handshakes ------------------------------------------------------------------------------


@pytest.fixture
async def impatient_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path, handshake_timeout_s=0.5)) as live:
        yield live


async def test_half_open_handshakes_are_closed_after_the_timeout(impatient_server: LiveServer) -> None:
    """A slowloris guard: 30 upgrades that never finish their head, and 10 connections that send nothing,
    are all closed by the server (they used to stay open for ever)."""
    port = impatient_server.port
    partial = upgrade_head(f"/chat/ws?token={impatient_server.token()}", end=False)
    answers = await asyncio.gather(
        *(exchange(port, partial) for _ in range(30)), *(exchange(port, b"") for _ in range(10))
    )
    for answer in answers[:30]:
        assert status_and_body(answer)[1]["code"] == "request_timeout"
    assert answers[30:] == [b""] * 10


async def test_a_kept_alive_connection_gets_the_same_deadline_for_its_next_head(
    impatient_server: LiveServer,
) -> None:
    """After a first request, uvicorn's keep-alive timer is cancelled by the next request's first byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient_server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if b"content-length" in line
            )
            await reader.readexactly(length)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
            rest = await reader.read()
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    status, body = status_and_body(rest)
    assert (status, body["code"]) == (408, "request_timeout")


async def test_the_handshake_timeout_spares_open_websockets(impatient_server: LiveServer) -> None:
    async with await impatient_server.client(1) as client:
        # a head left unfinished after the socket opened: once it is answered 408, the socket's own
        # deadline (armed earlier) has passed too
        partial = upgrade_head(f"/chat/ws?token={impatient_server.token()}", end=False)
        late = await exchange(impatient_server.port, partial)
        assert status_and_body(late)[1]["code"] == "request_timeout"
        turn = await client.turn(await client.chat("Still here"))
    assert turn.status == "completed"


# -- what the server logs for what any client can send ----------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def problems(self) -> list[str]:
        return [
            f"{r.name} {r.levelname}: {r.getMessage()}"
            for r in self.records
            if r.levelno >= logging.WARNING or r.exc_info is not None
        ]


@contextmanager
def server_log() -> Iterator[Records]:
    """Every record the server's loggers pass on (uvicorn's do not propagate to the root)."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.access")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.fixture
async def info_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path, log_level="info", handshake_timeout_s=0.5)) as live:
        yield live


async def test_a_refused_handshake_logs_no_error(info_server: LiveServer) -> None:
    """Refusals: no token, a bad one, a head too large, one too slow, too many headers."""
    too_large = padded_token("1", MAX_HEAD_BYTES + 1024)
    with server_log() as log:
        for url in (
            info_server.ws_url,
            f"{info_server.ws_url}?token=garbage",
            f"{info_server.ws_url}?token={too_large}",
        ):
            status, _ = await refusal(url)
            assert status in (401, 414)
        slow = await exchange(info_server.port, upgrade_head("/chat/ws", end=False))
        crowded = await exchange(
            info_server.port, upgrade_head("/chat/ws", *(f"X-{i}: {i}" for i in range(200)))
        )
        assert [status_and_body(answer)[0] for answer in (slow, crowded)] == [408, 431]
        async with info_server.http(None) as http:  # the server has finished with the refused connections
            assert (await http.get("/healthz")).status_code == 200
    assert log.problems() == []
    assert any("401" in r.getMessage() for r in log.records)  # logged, as INFO


async def test_invalid_utf8_closes_with_1007_and_logs_no_error(info_server: LiveServer) -> None:
    with server_log() as log:
        async with connect(f"{info_server.ws_url}?token={info_server.token()}") as ws:
            await ws.recv()  # websocketReady
            await ws.send(b'{"type": "ping", "x": "\xff\xfe"}', text=True)
            with pytest.raises(ConnectionClosedError) as info:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1007
        async with await info_server.client(1) as client:  # the server goes on
            assert (await client.turn(await client.chat("After"))).status == "completed"
    assert log.problems() == []


# -- JSON limits of frames, as docs/protocol.md section 2 states them --------------------------------


def nested(depth: int) -> str:
    """A ping whose frame object holds arrays down to ``depth`` levels in all."""
    return '{"type": "ping", "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def chat_with(**fields: str) -> str:
    """A chat request with raw JSON ``fields`` in user_settings.text."""
    raw = ", ".join(f'"{name}": {value}' for name, value in fields.items())
    return (
        '{"request_id": "limits", "user_input": {"prompt": "Hi"}, '
        f'"user_settings": {{"text": {{"model": "demo", {raw}}}}}}}'
    )


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (nested(1024), "pong"),
        (nested(1025), "invalid_json"),
        (nested(100_000), "invalid_json"),
        ('{"type": "ping", "x": 18446744073709551615}', "pong"),
        (chat_with(max_tokens="1" + "0" * 30), "invalid_request"),  # read as a float: not an integer
        (chat_with(temperature="1" + "0" * 308), "invalid_request"),  # 10^308: a number, out of 0-2
        (chat_with(temperature="1" + "0" * 309), "invalid_json"),  # 10^309: past the floating-point range
        (chat_with(temperature="1e309"), "invalid_json"),
        (chat_with(temperature="NaN"), "invalid_json"),
        (chat_with(temperature="-Infinity"), "invalid_json"),
        ('\ufeff{"type": "ping"}', "invalid_json"),
        ('{"type": "ping"}\ufeff', "invalid_json"),
        ('{"type": "ping", "x": "a\nb"}', "invalid_json"),
        ('{"type": "ping", "x": "\\ud800"}', "pong"),
        ('{"type": "cancel", "request_id": "\\ud800"}', "invalid_request"),
        ('{"type": "ping", "x": "\\ud800", "y": NaN}', "invalid_json"),
        ('{"type": "cancel", "type": "ping"}', "pong"),
    ],
    ids=[
        "depth-1024",
        "depth-1025",
        "depth-100000",
        "int-2^64-1",
        "int-10^30",
        "int-10^308",
        "int-10^309",
        "1e309",
        "nan",
        "infinity",
        "bom",
        "bom-after",
        "raw-newline",
        "lone-surrogate-ping",
        "lone-surrogate-cancel",
        "lone-surrogate-and-nan",
        "duplicate-key",
    ],
)
async def test_json_limits_of_frames(sqlite_server: LiveServer, text: str, answer: str) -> None:
    async with await sqlite_server.client(1) as client:
        await client.ws.send(text)
        while True:
            frame = await client.receive()
            if frame["type"] == "pong" or frame["type"] == "error":
                break
    assert (frame["type"] if frame["type"] == "pong" else frame["code"]) == answer
