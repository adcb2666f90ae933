"""The wire side of ``parley chat``: a connection that reconnects, and a turn that survives a dropped one.

A turn is followed by ``request_id`` and the last ``seq`` seen: after a drop the client reconnects and sends
``resume`` with that ``seq``, so no delta is shown twice or missed; when the server no longer keeps the
turn's events (``stream_expired``) the rest of the answer is read from ``GET /api/v1/sessions/{id}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from parley.protocol import ControlType, Event

# Waits before each reconnect attempt after a drop: about 30 s in all, then the client gives up.
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 8.0)
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0  # quitting waits no longer than this for the server's side of the close
# Statuses worth retrying after a drop: the server is restarting (draining) or a proxy is in between.
TRANSIENT_STATUSES = frozenset({408, 502, 503, 504})
STREAMING_POLL_S = 0.5
STREAMING_POLL_TRIES = 60
TOOL_OUTPUT_CHARS = 200


class ChatFailure(Exception):
    """Ends ``parley chat`` with exit code 1 and this one line."""


class _Transient(Exception):
    """A connection attempt that may succeed if tried again."""


class Sink(Protocol):
    """Where a turn's events go: the terminal."""

    def text(self, delta: str) -> None: ...
    def reasoning(self, delta: str) -> None: ...
    def step(self, line: str) -> None: ...
    def notice(self, line: str) -> None: ...


@dataclass
class Outcome:
    """How a turn ended: ``completed``, ``cancelled`` or ``error`` (with the server's message)."""

    status: str
    text: str
    session_id: str | None
    error: str | None = None


def http_base(ws_url: str) -> str:
    """``ws://host:port/prefix/chat/ws`` → ``http://host:port/prefix``: where the REST API is."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    path = parts.path.removesuffix("/").removesuffix("/chat/ws")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True)
class Settings:
    """What each chat request asks for besides its prompt (``user_settings.text``)."""

    model: str | None = None
    system: str | None = None
    tools: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


def chat_frame(prompt: str, session_id: str | None, settings: Settings) -> dict[str, Any]:
    """A chat request (docs/protocol.md section 2) with a fresh ``request_id``."""
    text: dict[str, Any] = {"options": settings.options}
    if settings.model:
        text["model"] = settings.model
    if settings.system:
        text["system_prompt"] = settings.system
    if settings.tools:
        text["tools"] = list(settings.tools)
    return {
        "request_type": "text",
        "request_id": uuid.uuid4().hex,
        "user_input": {"prompt": prompt, "chat_history": [], "session_id": session_id or ""},
        "user_settings": {"text": text},
    }


class Link:
    """One logical connection to ``/chat/ws``, reopened after a drop; always the camel dialect."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self._ws: ClientConnection | None = None

    async def open(self) -> None:
        """The first connection: any failure ends the command."""
        try:
            self._ws = await self._connect()
        except _Transient as exc:
            raise ChatFailure(str(exc)) from exc

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def send(self, frame: dict[str, Any]) -> None:
        if self._ws is None:
            raise ConnectionClosed(None, None)
        await self._ws.send(json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        if self._ws is None:
            raise ConnectionClosed(None, None)
        frame: dict[str, Any] = json.loads(await self._ws.recv())
        return frame

    async def ensure_open(self, sink: Sink) -> None:
        """Reconnect first when the connection was lost between turns."""
        if self._ws is None or self._ws.close_code is not None:
            await self.reconnect(sink)

    async def reconnect(self, sink: Sink) -> None:
        """Try again with backoff for about 30 s; a refusal (a bad token) ends the command at once."""
        sink.notice("connection lost, reconnecting…")
        self._ws = None
        last = "no attempt"
        for delay in RETRY_DELAYS_S:
            await asyncio.sleep(delay)
            try:
                self._ws = await self._connect()
            except _Transient as exc:
                last = str(exc)
                continue
            sink.notice("reconnected")
            return
        raise ChatFailure(
            f"lost the connection and could not reconnect within {sum(RETRY_DELAYS_S):g} s: {last}"
        )

    async def _connect(self) -> ClientConnection:
        query = urlencode({"token": self.token, "events": "camel"})
        full = f"{self.url}{'&' if '?' in self.url else '?'}{query}"
        try:
            ws = await connect(
                full, max_size=None, open_timeout=OPEN_TIMEOUT_S, close_timeout=CLOSE_TIMEOUT_S
            )
        except InvalidStatus as exc:
            raise _refusal(self.url, exc) from exc
        except InvalidURI as exc:
            raise ChatFailure(f"{self.url} is not a WebSocket URL: {exc}") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise _Transient(f"cannot reach {self.url}: {_cause(exc)}") from exc
        try:
            await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_S)  # websocketReady
        except (ConnectionClosed, TimeoutError) as exc:
            raise _Transient(f"{self.url} accepted the connection but sent no websocketReady") from exc
        return ws


def _refusal(url: str, exc: InvalidStatus) -> Exception:
    """The server's answer to the handshake, as one line: its status, code and detail."""
    response = exc.response
    detail = ""
    try:
        body = json.loads(response.body or b"")
        detail = f" {body.get('code', '')}: {body.get('detail', '')}".rstrip(": ")
    except (ValueError, AttributeError):
        pass
    line = f"{url} refused the connection: HTTP {response.status_code}{detail}"
    if response.status_code == 401:
        line += " (check --token, or the server's secret)"
    return _Transient(line) if response.status_code in TRANSIENT_STATUSES else ChatFailure(line)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # asyncio's own text only repeats the address
    return str(exc) or type(exc).__name__


@dataclass
class Turn:
    """One chat request followed to its end, across reconnects."""

    link: Link
    frame: dict[str, Any]
    session_id: str | None = None
    last_seq: int = -1
    parts: list[str] = field(default_factory=list)
    error: str | None = None
    cancel_requested: bool = False
    _resent: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def request_id(self) -> str:
        return str(self.frame["request_id"])

    def cancel(self) -> None:
        """Ask the server to stop this turn (from a signal handler); the partial answer stays."""
        self.cancel_requested = True
        task = asyncio.get_running_loop().create_task(self._send_cancel())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, sink: Sink) -> Outcome:
        try:
            return await self._follow(sink)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, sink: Sink) -> Outcome:
        await self.link.ensure_open(sink)
        try:
            await self.link.send(self.frame)
        except ConnectionClosed:
            await self._reattach(sink)
        while True:
            try:
                frame = await self.link.recv()
            except ConnectionClosed:
                await self._reattach(sink)
                continue
            if _refused_resume(frame):
                if frame.get("request_id") == self.request_id:
                    outcome = await self._expired(sink, str(frame.get("code")))
                    if outcome is not None:
                        return outcome
                continue
            outcome = self._handle(frame, sink)
            if outcome is not None:
                return outcome

    async def _reattach(self, sink: Sink) -> None:
        await self.link.reconnect(sink)
        resume = {"type": ControlType.RESUME.value, "request_id": self.request_id, "after_seq": self.last_seq}
        await self.link.send(resume)
        if self.cancel_requested:
            await self._send_cancel()

    async def _send_cancel(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # else it is sent again after the reconnect
            await self.link.send({"type": ControlType.CANCEL.value, "request_id": self.request_id})

    def _handle(self, frame: dict[str, Any], sink: Sink) -> Outcome | None:
        seq = frame.get("seq")
        if frame.get("request_id") != self.request_id or not isinstance(seq, int) or seq <= self.last_seq:
            return None  # another frame (pong), or one already seen before a reconnect
        self.last_seq = seq
        self.session_id = frame.get("session_id") or self.session_id
        kind, content = frame.get("type"), frame.get("content")
        if kind == Event.TEXT:
            self.parts.append(str(content))
            sink.text(str(content))
        elif kind == Event.REASONING:
            sink.reasoning(str(content))
        elif kind == Event.TOOL_USE and isinstance(content, dict):
            sink.step(f"[tool {content.get('name')} {json.dumps(content.get('input'), ensure_ascii=False)}]")
        elif kind == Event.TOOL_RESULT and isinstance(content, dict):
            sink.step(f"[result {_short(str(content.get('output')))}]")
        elif kind == Event.ERROR:
            self.error = f"{content} ({frame.get('code')})"
        elif kind == Event.COMPLETE:
            return self._outcome(str(frame.get("status")))
        return None

    def _outcome(self, status: str) -> Outcome:
        return Outcome(status, "".join(self.parts), self.session_id, self.error)

    async def _expired(self, sink: Sink, code: str) -> Outcome | None:
        """The server cannot follow the turn for us: resend a request it may never have got, else read the
        stored answer."""
        if code == "stream_expired" and self.last_seq < 0 and not self._resent:
            self._resent = True
            await self.link.send(self.frame)
            return None
        if self.session_id is None:
            raise ChatFailure("the server no longer has this turn and it named no session to read it from")
        sink.notice(f"the server cannot resume this turn ({code}): reading the answer from the REST API")
        message = await self._stored_answer()
        content = str(message.get("content") or "")
        shown = "".join(self.parts)
        rest = content[len(shown) :] if content.startswith(shown) else content
        if rest:
            self.parts.append(rest)
            sink.text(rest)
        if message.get("status") == "error":
            self.error = f"the answer ended with an error ({message.get('error_code')})"
        return self._outcome(str(message.get("status")))

    async def _stored_answer(self) -> dict[str, Any]:
        """The turn's answer from REST, once it is no longer streaming."""
        url = f"{http_base(self.link.url)}/api/v1/sessions/{self.session_id}"
        headers = {"Authorization": f"Bearer {self.link.token}"}
        async with httpx.AsyncClient(headers=headers, timeout=OPEN_TIMEOUT_S) as http:
            for _ in range(STREAMING_POLL_TRIES):
                try:
                    response = await http.get(url)
                except httpx.HTTPError as exc:
                    raise ChatFailure(f"cannot read the answer from {url}: {exc}") from exc
                if response.status_code != 200:
                    raise ChatFailure(f"cannot read the answer from {url}: HTTP {response.status_code}")
                message = _answer_of(response.json().get("messages", []), self.request_id)
                if message.get("status") != "streaming":
                    return message
                await asyncio.sleep(STREAMING_POLL_S)  # no event to wait on: the turn runs elsewhere
        raise ChatFailure(f"the answer is still streaming on the server; read it later from {url}")


def _refused_resume(frame: dict[str, Any]) -> bool:
    """An error outside any turn (no ``seq``): for our ``request_id``, a refused resume — ``stream_expired``
    (the server no longer keeps the turn's events), ``cluster_unavailable``."""
    return frame.get("type") == Event.ERROR and "seq" not in frame


def _answer_of(messages: Iterable[dict[str, Any]], request_id: str) -> dict[str, Any]:
    answers = [m for m in messages if m.get("role") == "assistant" and m.get("request_id") == request_id]
    if not answers:
        raise ChatFailure(f"the session holds no answer to request {request_id}")
    return answers[-1]


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TOOL_OUTPUT_CHARS else line[:TOOL_OUTPUT_CHARS] + "…"
