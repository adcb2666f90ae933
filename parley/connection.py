"""The WebSocket loop: read frames while turns stream, queue requests, handle control frames at once.

No business logic here: a chat request becomes a ``Turn``; this connection follows the turn's log
(parley/streams.py) and its frames go out through the ``Outbox`` (parley/outbox.py). ``resume`` follows
another turn of the same customer, from any connection, and ``cancel`` stops one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from pydantic import ValidationError
from starlette.websockets import WebSocket

from parley.auth import Identity
from parley.cluster import ClusterUnavailable
from parley.config import Dialect
from parley.errors import LimitExceeded, ShuttingDown
from parley.outbox import Outbox
from parley.protocol import (
    MAX_REQUEST_ID_CHARS,
    STREAM_EXPIRED,
    CancelFrame,
    ControlType,
    ResumeFrame,
    closing_frame,
    describe_validation_error,
    encode,
    frame_error,
    parse_frame,
    pong_frame,
    ready_frame,
)
from parley.services import TurnServices
from parley.streams import Expired, Follower, TurnLog
from parley.tasks import Supervisor
from parley.text import identifier_problem
from parley.turn import Turn
from parley.uvicorn_ws import abort_transport

log = logging.getLogger("parley.connection")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_FLUSH_TIMEOUT_S = 2.0
IDLE_CHECK_MAX_S = 5.0
REPLICA_LAG_S = 2.0  # the longest a resume waits for a replica to reach what the client saw elsewhere


def idle_check_interval(idle_timeout_s: float) -> float:
    """How often the idle sweep looks: a quarter of the timeout, at most every 5 s (so an idle client is
    closed within 1–1.25 timeouts, or the timeout plus 5 s)."""
    return min(idle_timeout_s / 4, IDLE_CHECK_MAX_S)


class Connection:
    """One client socket: its reader loop, its queue of turns and the worker that runs them in order, and
    the turns it follows (its own, and those it resumed)."""

    __slots__ = (
        "_background",
        "_last_active",
        "_reader",
        "_worker",
        "closing",
        "current",
        "dialect",
        "following",
        "id",
        "identity",
        "outbox",
        "services",
        "supervisor",
        "waiting",
        "ws",
    )

    def __init__(
        self,
        websocket: WebSocket,
        identity: Identity,
        services: TurnServices,
        supervisor: Supervisor,
        dialect: Dialect,
    ) -> None:
        self.ws = websocket
        self.identity = identity
        self.services = services
        self.supervisor = supervisor
        self.dialect = dialect
        self.id = uuid.uuid4().hex
        settings = services.settings
        self.outbox = Outbox(websocket, settings.send_buffer_bytes, settings.send_stall_timeout_s, self._drop)
        self.waiting: list[Turn] = []
        self.current: Turn | None = None
        self.following: dict[TurnLog, Follower] = {}
        # Control frames' work that waits: resumes on the socket to drain or on Redis, cancels on Redis (made
        # on the first: an idle connection holds no set).
        self._background: set[asyncio.Task[None]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._last_active = asyncio.get_running_loop().time()
        self.closing = False

    async def serve(self) -> None:
        """Run until the client leaves, asks to close, idles out or is too slow. Turns outlive this."""
        self.send(ready_frame(self.dialect, self.id))
        self.supervisor.outboxes.add(self.outbox)
        self.supervisor.watch_idle(self, idle_check_interval(self.services.settings.idle_timeout_s))
        self._reader = asyncio.current_task()
        try:
            while not self.closing:
                message = await self.ws.receive()
                self._last_active = asyncio.get_running_loop().time()
                if message["type"] == "websocket.disconnect":
                    return
                if self.closing:
                    continue  # closing: the client's close answer (a disconnect) is all we wait for
                if message.get("text") is None:
                    self.send(frame_error("invalid_json", "Frames must be JSON text, not binary."))
                elif not await self._on_text(message["text"]):
                    return
        except asyncio.CancelledError:
            if self.outbox.detached and self._reader is not None and self._reader.uncancel() == 0:
                return  # ``_drop`` stopped the reader: the client is gone
            raise
        finally:
            self._reader = None
            self.supervisor.idlers.discard(self)
            self.supervisor.outboxes.discard(self.outbox)
            await self._unfollow_all()
            await self.outbox.close()

    def send(self, frame: dict[str, Any]) -> None:
        self.outbox.push(encode(frame))

    def idle_expired(self, now: float) -> bool:
        """Idle: no frames from the client and no turn running, waiting or followed, for the whole timeout."""
        if self.current is not None or self.waiting or self.following or self.closing:
            return False
        return now - self._last_active >= self.services.settings.idle_timeout_s

    def expire(self) -> None:
        """Close an idle connection (from the idle sweep): ``closing``, then 1001."""
        self.closing = True
        self.supervisor.spawn(self._close(CLOSE_GOING_AWAY, "timeout"), name=f"parley-idle-{self.id}")

    def _drop(self) -> None:
        """The outbox gave up on a too-slow client: drop the connection now, with what it never read
        (the reader then sees the disconnect); where the server allows no abort, stop the reader."""
        if not abort_transport(self.ws) and self._reader is not None:
            self._reader.cancel()

    async def _on_text(self, text: str) -> bool:
        """Handle one text frame; False when the connection should end."""
        try:
            frame, surrogate = parse_frame(text)
        except ValueError:
            self.send(frame_error("invalid_json", "The frame is not valid JSON."))
            return True
        if not isinstance(frame, dict):
            self.send(frame_error("invalid_json", "A frame must be a JSON object."))
            return True
        kind = frame.get("type")
        if kind == ControlType.PING:
            self.send(pong_frame())
        elif kind in (ControlType.CANCEL, ControlType.RESUME) and surrogate is not None:
            message = f"Invalid {kind} frame: {surrogate}: must be valid Unicode text."
            self.send(frame_error("invalid_request", message))  # its request_id cannot be echoed
        elif kind == ControlType.CANCEL:
            self._on_cancel(frame)
        elif kind == ControlType.RESUME:
            self._on_resume(frame)
        elif kind == ControlType.CLOSE_SESSION:
            self.closing = True
            await self._close(CLOSE_NORMAL, "client_request")
            return False
        else:
            refusal = None
            if surrogate is not None:
                refusal = f"{surrogate}: must be valid Unicode text (it holds a lone surrogate)"
                if surrogate == "request_id":  # not echoed: the turn carries one the server makes up
                    frame = {**frame, "request_id": None}
            self._submit(Turn(frame, self.identity, self.services, refusal))
        return True

    def _refuse_frame(self, frame: dict[str, Any], message: str) -> None:
        """``invalid_request`` for a control frame, with its request_id when it has a usable one."""
        error = frame_error("invalid_request", message)
        rid = frame.get("request_id")
        usable = isinstance(rid, str) and identifier_problem(rid, MAX_REQUEST_ID_CHARS) is None
        self.send({**error, "request_id": rid} if usable else error)

    # -- cancel ------------------------------------------------------------------------------------------

    def _on_cancel(self, frame: dict[str, Any]) -> None:
        try:
            cancel = CancelFrame.model_validate(frame)
        except ValidationError as exc:
            self._refuse_frame(frame, f"Invalid cancel frame: {describe_validation_error(exc, frame)}")
            return
        if cancel.request_id is None:
            self._cancel_unnamed()
            return
        for turn in (self.current, *self.waiting):
            if turn is not None and turn.request_id == cancel.request_id:
                turn.cancel()
                return
        found = self.services.streams.find(self.identity.customer_id, cancel.request_id)
        if found is not None and found.cancel is not None:
            found.cancel()  # a turn of this customer's from another connection, followed or not
        elif self.services.cluster is not None and (found is None or (found.replica and not found.ended)):
            self._in_background(self._cancel_elsewhere(cancel.request_id), "cancel")
        # Else no such turn: it raced with completion. Ignored, as the protocol says.

    async def _cancel_elsewhere(self, request_id: str) -> None:
        """A cancel of a turn that may run on another process (parley/cluster/)."""
        assert self.services.cluster is not None
        try:
            await self.services.cluster.cancel(self.identity.customer_id, request_id)
        except ClusterUnavailable as exc:
            self._unavailable(exc, request_id)

    def _unavailable(self, exc: ClusterUnavailable, request_id: str) -> None:
        """A turn of another process cannot be reached now (Redis is down): said with its request_id."""
        self.send({**frame_error(exc.code, exc.message, exc.stage), "request_id": request_id})

    def _cancel_unnamed(self) -> None:
        """``cancel`` without a request_id: this connection's running turn; when it runs none, the running
        turns it follows after a ``resume``."""
        if self.current is not None:
            self.current.cancel()
            return
        for followed in list(self.following):
            if followed.cancel is not None:
                followed.cancel()
            elif followed.replica and not followed.ended:  # it runs on another process
                self._in_background(self._cancel_elsewhere(followed.request_id), "cancel")

    # -- following turns ---------------------------------------------------------------------------------

    def _submit(self, turn: Turn) -> None:
        follower = Follower(turn.log, self.outbox, self.dialect, on_done=self._followed)
        self._follow(turn.log, follower)
        turn.log.attach(follower)  # before the turn says anything
        in_flight = len(self.waiting) + (self.current is not None)
        settings = self.services.settings
        if not self.supervisor.accepting:
            turn.refuse(ShuttingDown("The server is shutting down; send this again to another server."))
        elif in_flight > settings.max_queued_requests:
            limit = settings.max_queued_requests
            turn.refuse(LimitExceeded(f"Too many requests: at most {limit} may wait behind the running one."))
        elif self.services.streams.running(turn.identity.customer_id) > settings.max_turns_per_customer:
            limit = settings.max_turns_per_customer
            turn.refuse(
                LimitExceeded(
                    f"Too many requests: at most {limit} of your answers may be running or waiting at once, "
                    "over all your connections; cancel one or wait for one to end."
                )
            )
        else:
            self.waiting.append(turn)
            if self._worker is None or self._worker.done():
                self._worker = self.supervisor.spawn(self._work(), name=f"parley-conn-{self.id}")

    def _on_resume(self, frame: dict[str, Any]) -> None:
        try:
            resume = ResumeFrame.model_validate(frame)
        except ValidationError as exc:
            self._refuse_frame(frame, f"Invalid resume frame: {describe_validation_error(exc, frame)}")
            return
        found = self.services.streams.find(self.identity.customer_id, resume.request_id)
        if found is not None:
            self._resume(found, resume, frame)
        elif self.services.cluster is not None:
            self._in_background(self._resume_elsewhere(resume, frame), "resume")
        else:
            self._expired(resume.request_id)

    async def _resume_elsewhere(self, resume: ResumeFrame, frame: dict[str, Any]) -> None:
        """Resume a turn that may run on another process: followed here through a replica of its log."""
        assert self.services.cluster is not None
        try:
            found = await self.services.cluster.replica(self.identity.customer_id, resume.request_id)
        except ClusterUnavailable as exc:
            self._unavailable(exc, resume.request_id)
            return
        if found is None:
            self._expired(resume.request_id)
        elif not self.outbox.detached:
            self._resume(found, resume, frame)

    async def _resume_when_seen(self, found: TurnLog, resume: ResumeFrame, frame: dict[str, Any]) -> None:
        """Resume a replica once it has the event the client saw last (or gave up waiting for it)."""
        assert self.services.cluster is not None
        await self.services.cluster.caught_up(found, resume.after_seq, REPLICA_LAG_S)
        if not self.outbox.detached:
            self._resume(found, resume, frame, waited=True)

    def _in_background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Work for a control frame that waits on Redis: owned by this connection, cancelled with it."""
        task = asyncio.create_task(work, name=f"parley-{what}-{self.id}")
        waiting = self._background = self._background or set()
        waiting.add(task)
        task.add_done_callback(waiting.discard)

    def _resume(
        self, found: TurnLog, resume: ResumeFrame, frame: dict[str, Any], waited: bool = False
    ) -> None:
        start = found.start(resume.after_seq, self.dialect == "snake")
        if start is None and found.replica and not found.ended and not waited:
            # A copy of a turn running elsewhere is a flush behind its owner, whose client may have seen more.
            self._in_background(self._resume_when_seen(found, resume, frame), "resume")
            return
        if start is None:
            last = found.next_seq - 1 + (found.ended and self.dialect == "snake")
            beyond = f"after_seq {resume.after_seq} is beyond the turn's last event so far ({last})"
            self._refuse_frame(frame, f"Invalid resume frame: {beyond}.")
            return
        follower = Follower(found, self.outbox, self.dialect, start, self._followed)
        try:
            caught_up = follower.catch_up()
        except Expired:
            self._expired(resume.request_id)
            return
        self._follow(found, follower)
        if caught_up:
            found.attach(follower)
            self.services.metrics.resume("replayed")
        else:
            self._in_background(self._catch_up(follower), "resume")

    async def _catch_up(self, follower: Follower) -> None:
        """Replay the rest of a long turn as the socket drains, then follow it live."""
        outbox = self.outbox
        try:
            while not outbox.detached:
                await outbox.wait_ready()  # gives up on (drops) a client that stalls
                if follower.catch_up():
                    follower.log.attach(follower)
                    self.services.metrics.resume("replayed")
                    return
        except Expired:  # the log dropped what this follower still needed while it waited
            self._unfollow(follower)
            self._expired(follower.log.request_id)

    def _expired(self, request_id: str) -> None:
        """The same answer for a turn that is unknown, expired, evicted or another customer's."""
        self.services.metrics.resume("expired")
        self.send({**frame_error("stream_expired", STREAM_EXPIRED), "request_id": request_id})

    def _follow(self, log: TurnLog, follower: Follower) -> None:
        """Follow ``log`` with ``follower``; a second resume of the same turn replaces the first."""
        previous = self.following.pop(log, None)
        if previous is not None:
            log.detach(previous)
        self.following[log] = follower

    def _followed(self, follower: Follower) -> None:
        """A followed turn's last event went out."""
        if self.following.get(follower.log) is follower:
            del self.following[follower.log]
            self._last_active = asyncio.get_running_loop().time()

    def _unfollow(self, follower: Follower) -> None:
        follower.log.detach(follower)
        if self.following.get(follower.log) is follower:
            del self.following[follower.log]

    async def _unfollow_all(self) -> None:
        """The socket is gone: stop following (the turns go on; a disconnect is a detach)."""
        for follower in list(self.following.values()):
            self._unfollow(follower)
        waiting = list(self._background or ())
        for task in waiting:
            task.cancel()
        for task in waiting:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- running turns -----------------------------------------------------------------------------------

    async def _work(self) -> None:
        """Run waiting turns in order. Owned by the supervisor, so turns finish after a disconnect."""
        while self.waiting:
            turn = self.current = self.waiting.pop(0)
            if not self.supervisor.accepting:
                turn.refuse(ShuttingDown("The server is shutting down; send this again to another server."))
                continue
            self.supervisor.running.add(turn)
            try:
                await turn.run()
            finally:
                self.supervisor.running.discard(turn)
                self.current = None
                self._last_active = asyncio.get_running_loop().time()

    async def _close(self, code: int, reason: str) -> None:
        self.send(closing_frame(reason))
        await self.outbox.flush(CLOSE_FLUSH_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_FLUSH_TIMEOUT_S)
