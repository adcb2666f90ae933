"""One chat turn, start to finish: validate → persist the question → stream the model → persist → events.

A turn knows nothing of sockets: it logs its events (``TurnEmitter`` into its ``TurnLog``, parley/streams.py),
and the connections that follow it read them from there. The model streams through one step function
(``Streamer.step``, parley/step.py): once for a plain turn, once per model call for a request that selects
tools (``ToolLoop``, parley/agent.py). Same stages, same closing events either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import ValidationError

from parley import logs
from parley.agent import CANCELLED_OUTPUT, ToolLoop, history_messages, step_limit
from parley.answer import Answer, Checkpointer, TextSender
from parley.auth import Identity
from parley.context import build_context
from parley.errors import (
    DatabaseFailed,
    Forbidden,
    LimitExceeded,
    ParleyError,
    ProviderFailed,
    SessionNotFound,
    ValidationFailed,
)
from parley.protocol import (
    MAX_REQUEST_ID_CHARS,
    ChatRequest,
    TurnEmitter,
    TurnStatus,
    describe_validation_error,
    join_text,
)
from parley.providers.base import ChatMessage, ProviderRequest
from parley.providers.registry import Resolved
from parley.services import TurnServices
from parley.step import Streamer
from parley.store.repository import ContextMessage, TurnRecord, parse_uuid
from parley.streams import LiveAnswer, TurnLog
from parley.text import identifier_problem
from parley.titles import schedule_title
from parley.tools import ToolContext, ToolSelection

log = logging.getLogger("parley.turn")

DEFAULT_MODEL = "demo"

__all__ = ["TURN_TOO_LONG", "Turn", "request_id_of"]

TURN_TOO_LONG = "turn_too_long"  # the error code of an answer stopped at PARLEY_MAX_TURN_S


def request_id_of(raw: dict[str, Any]) -> tuple[str, str | None]:
    """The turn's request_id and, when the client's cannot be used, why (the turn then carries one the
    server made up, so the refusal can still be told apart). A number is echoed as text."""
    value = raw.get("request_id")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        return uuid.uuid4().hex, None
    problem = identifier_problem(value, MAX_REQUEST_ID_CHARS)
    return (uuid.uuid4().hex, f"request_id {problem}") if problem else (value, None)


@dataclass
class Streaming:
    """A turn while its model streams: the task to interrupt and what to cut on a cancel."""

    task: asyncio.Task[Any]
    streamer: Streamer
    loop: ToolLoop | None


class Turn:
    """A chat request from arrival to ``fullProcessComplete``.

    Its cancel state is ``cancel_requested`` (asked for: a turn that has not streamed yet never will) and
    ``_streaming`` (while the model streams: what ``cancel`` interrupts); the emitter's ``cut`` records
    that ``cancelled`` was said, after which only the closing events follow.
    """

    def __init__(
        self,
        raw: dict[str, Any],
        identity: Identity,
        services: TurnServices,
        refusal: str | None = None,
    ) -> None:
        self.raw = raw
        self.identity = identity
        self.services = services
        self.request_id, bad_id = request_id_of(raw)
        self._refusal = refusal or bad_id  # a frame the connection already found unusable
        self.log: TurnLog = services.streams.open(identity.customer_id, self.request_id)
        self.log.cancel = self.cancel
        self.log.stop = self.stop
        self.events = TurnEmitter(self.log, self.request_id)
        self.arrived = time.perf_counter()  # the request's arrival: what its metrics measure from
        # Not a method of this turn: the emitter must not hold the turn (a cycle keeps it for the GC to find).
        self.events.on_first_text = partial(services.metrics.first_text, self.arrived)
        self._cancel_asked: float | None = None
        self._provider: str | None = None  # the provider's name, once the model resolved
        self.cancel_requested = False
        # why the server stopped it (``turn_too_long``, ``session_deleted``); None: a client's cancel
        self.stop_code: str | None = None
        self._streaming: Streaming | None = None
        self._answer: Answer | None = None
        self._loop: ToolLoop | None = None

    def cancel(self, by_client: bool = True) -> None:
        """Stop streaming now; before streaming starts, stop it from starting. After it, no effect.

        A streaming turn says ``cancelled`` here and now, from the caller's task (the reader of whichever
        connection sent the cancel, or a REST request): its text is cut at what was sent and its open tool
        calls get their ``Cancelled`` results first, so the client need not wait for the stream to wind
        down, which under load is a few turns of a busy event loop later. The streaming task is then
        cancelled, and takes the cancellation back (``_stream``).
        """
        if not self.cancel_requested and by_client:  # a shutdown's cancel is not in parley_cancel_seconds
            self._cancel_asked = time.perf_counter()
        self.cancel_requested = True
        streaming = self._streaming
        if streaming is None or self.events.cut or self.events.complete:
            return
        streaming.streamer.text.close()
        if streaming.loop is not None:
            streaming.loop.abandon(CANCELLED_OUTPUT, "cancelled")
        self._say_cancelled()
        streaming.task.cancel()

    def _say_cancelled(self) -> None:
        """``cancelled``, once; a client's cancel is timed from when it reached the turn."""
        if self.events.cut or self.events.complete:
            return
        self.events.cancelled(self.stop_code)
        if self.stop_code is None and self._cancel_asked is not None:
            self.services.metrics.cancelled(self._cancel_asked)

    def _overtime(self) -> None:
        """Running longer than ``PARLEY_MAX_TURN_S``: stopped as a cancel stops it, told apart by its code."""
        if not (self.cancel_requested or self.events.complete):
            log.info("turn %s ran for %ss: stopped", self.request_id, self.services.settings.max_turn_s)
            self.stop(TURN_TOO_LONG)

    def stop(self, code: str) -> None:
        """The server cancels the turn, saying why (``code``) in its ``cancelled`` event and stored answer;
        after a cancel, or once ended, no effect."""
        if self.cancel_requested or self.events.complete:
            return
        self.stop_code = code
        self.cancel()

    def refuse(self, error: ParleyError) -> None:
        """End a turn that will not run (queue full, server shutting down) with its full bracket."""
        self._announce()
        self._fail(error)
        self.services.metrics.turn_ended("error", self._provider, self.arrived, running=False)

    async def run(self) -> TurnStatus:
        """Run the turn to its end; whatever happens, the client gets the closing events. One that runs
        longer than ``PARLEY_MAX_TURN_S`` is stopped (``_overtime``)."""
        metrics = self.services.metrics
        status: TurnStatus = "error"
        with logs.turn_context(self.request_id):
            timer = asyncio.get_running_loop().call_later(self.services.settings.max_turn_s, self._overtime)
            metrics.turn_started()
            try:
                status = await self._run()
                return status
            except Exception:
                log.exception("turn %s failed unexpectedly", self.request_id)
                if self.events.complete:
                    return "error"
                return self._fail(ParleyError("Something went wrong on the server; the details are logged."))
            finally:
                timer.cancel()
                self.log.cancel = None
                metrics.turn_ended(status, self._provider, self.arrived, running=True)

    async def _run(self) -> TurnStatus:
        resolved = self._announce()
        try:
            request, resolved, tools = await self._validate(resolved)
        except ParleyError as exc:
            return self._fail(exc)
        try:
            record = await self._persist_question(request, resolved)
        except ValidationFailed as exc:  # a branch target not in the session: refused, nothing stored
            return self._fail(exc)
        except DatabaseFailed as exc:
            log.exception("turn %s: could not store the question", self.request_id)
            return self._fail(exc)
        self.events.set_session(str(record.session_id))
        logs.SESSION_ID.set(str(record.session_id))
        answer = self._answer = Answer()
        self.services.streams.bind_message(self.log, record.ai_message_id, record.user_message_id)
        self.log.live = self._live
        loop = self._loop = self._tool_loop(request, resolved, tools, record) if tools else None
        try:
            outcome = await self._stream(self._provider_request(request, resolved, record, tools), resolved)
        except Exception:  # a bug: the answer is still stored, as an error, with what was sent
            log.exception("turn %s failed while streaming", self.request_id)
            outcome = ParleyError("Something went wrong on the server; the details are logged.")
        status = await self._finish(record, answer, outcome, loop)
        if status == "completed" and record.new_session:
            schedule_title(self.services, resolved, record, answer.content)
        return status

    def _live(self) -> LiveAnswer:
        """What this turn has sent so far (for REST while the answer is ``streaming``)."""
        answer = self._answer
        assert answer is not None
        steps = self._loop.stored() if self._loop is not None else None
        return LiveAnswer(answer.content, answer.reasoning_text, steps, self.log.last_seq())

    # -- stages ------------------------------------------------------------------------------------

    def _announce(self) -> Resolved | ParleyError:
        """Send ``working``; resolve the model on the way so the event can name the provider."""
        settings = self.raw.get("user_settings")
        text = settings.get("text") if isinstance(settings, dict) else None
        model = text.get("model") if isinstance(text, dict) else None
        model = model if isinstance(model, str) and model else DEFAULT_MODEL
        request_type = self.raw.get("request_type")
        try:
            resolved: Resolved | ParleyError = self.services.registry.resolve(model)
        except ParleyError as exc:
            resolved = exc
        provider = self._provider = resolved.provider.name if isinstance(resolved, Resolved) else None
        self.events.working(request_type if isinstance(request_type, str) else "text", model, provider)
        return resolved

    async def _validate(
        self, resolved: Resolved | ParleyError
    ) -> tuple[ChatRequest, Resolved, ToolSelection | None]:
        if self._refusal is not None:
            raise ValidationFailed(f"Invalid request: {self._refusal}.")
        try:
            request = ChatRequest.model_validate(self.raw)
        except ValidationError as exc:
            raise ValidationFailed(f"Invalid request: {describe_validation_error(exc, self.raw)}") from None
        if request.customer_id is not None and str(request.customer_id) != self.identity.customer_id:
            raise Forbidden("customer_id does not match the authenticated customer.")
        prompt = request.prompt_text
        if not prompt.strip() and not request.user_input.regenerate:  # regenerate reuses the stored prompt
            raise ValidationFailed("The prompt is empty.", code="prompt_required")
        limit = self.services.settings.max_prompt_chars
        if len(prompt) > limit:
            raise LimitExceeded(
                f"The prompt has {len(prompt)} characters; the limit is {limit}.", code="prompt_too_long"
            )
        if isinstance(resolved, ParleyError):
            raise resolved
        text = request.user_settings.text
        resolved.provider.check_options(text.options)
        if not text.tools:
            return request, resolved, None
        tools = self.services.tools.select(text.tools)  # unknown_tool: refused before anything is stored
        if not resolved.provider.supports_tools:
            raise ValidationFailed(
                f"The model {resolved.model!r} cannot call tools; send no user_settings.text.tools.",
                code="tools_not_supported",
            )
        return request, resolved, tools

    async def _persist_question(self, request: ChatRequest, resolved: Resolved) -> TurnRecord:
        """Store the question; an unknown session (or someone else's) is refused here, in the same
        transaction that locks it, rather than by a read of its own before."""
        session_id = request.user_input.session_id
        key = parse_uuid(session_id) if session_id else None
        if session_id and key is None:
            raise SessionNotFound
        imported = (
            []
            if session_id
            else [
                ContextMessage(m.role, join_text(m.content))
                for m in request.user_input.chat_history
                if m.role != "system" and join_text(m.content)
            ]
        )
        return await self.services.store.start_turn(
            customer_id=self.identity.customer_id,
            session_id=key,
            prompt=request.prompt_text,
            model=resolved.model,
            provider=resolved.provider.name,
            request_id=self.request_id,
            imported=imported,
            edit_of=request.user_input.edit_of or None,
            regenerate=request.user_input.regenerate or None,
        )

    def _provider_request(
        self, request: ChatRequest, resolved: Resolved, record: TurnRecord, tools: ToolSelection | None
    ) -> ProviderRequest:
        text = request.user_settings.text
        if request.user_input.session_id:
            # Earlier agentic answers replay their tool steps when this request offers tools, else as text.
            history = history_messages(record.history, structured=tools is not None)
        else:
            history = [ChatMessage(m.role, join_text(m.content)) for m in request.user_input.chat_history]
        budget = self.services.settings.context_budget_chars
        messages = build_context(text.system_prompt, history, record.prompt, budget)
        return ProviderRequest(
            resolved.upstream_model,
            messages,
            text.temperature,
            text.max_tokens,
            text.options,
            tools=tools.specs if tools else (),
        )

    def _streamer(self, resolved: Resolved, answer: Answer) -> Streamer:
        settings = self.services.settings
        events = self.events
        text = TextSender(events.text, answer, settings.coalesce_ms / 1000, events.reasoning)
        return Streamer(
            resolved.provider,
            events,
            self.log,
            answer,
            text,
            settings.provider_attempts,
            settings.provider_retry_backoff_s,
        )

    def _tool_loop(
        self, request: ChatRequest, resolved: Resolved, tools: ToolSelection, record: TurnRecord
    ) -> ToolLoop:
        assert self._answer is not None
        settings = self.services.settings
        return ToolLoop(
            streamer=self._streamer(resolved, self._answer),
            selection=tools,
            # The customer is the token's: a tool reaching stored data sees only this customer's sessions.
            context=ToolContext(self.identity.customer_id, self.services.store.search.messages),
            max_steps=step_limit(request.user_settings.text.max_steps, settings.max_tool_steps),
            store=self.services.store,
            message_id=record.ai_message_id,
            seq=self.log.last_seq,  # the log's, not this turn's: the loop must not hold the turn
        )

    async def _stream(self, request: ProviderRequest, resolved: Resolved) -> TurnStatus | ParleyError:
        """Stream the answer in the turn's own task: no task to start, so under load the first text is a
        turn of the event loop sooner. ``cancel`` cancels this task while it streams, and only then; the
        cancellation is taken back here, unless someone else (the server shutting down) asked for one too.
        """
        if self.cancel_requested:
            return "cancelled"
        answer, loop, record_id = self._answer, self._loop, self.log.message_id
        assert answer is not None and record_id is not None
        streamer = loop.streamer if loop is not None else self._streamer(resolved, answer)
        settings = self.services.settings
        checkpoints = Checkpointer(
            self.services.store, record_id, answer, settings.checkpoint_interval_s, self.log.last_seq
        )
        task = asyncio.current_task()
        assert task is not None
        outcome: TurnStatus | ParleyError = "completed"
        self._streaming = Streaming(task, streamer, loop)
        try:
            if loop is None:
                await streamer.step(request)
            else:
                await loop.run(request)
        except asyncio.CancelledError:
            if not self.events.cut:
                raise
        except ParleyError as exc:
            # Its traceback holds this frame, which holds it: a cycle that would keep the ended turn for
            # the cyclic GC. What it says is all the turn uses; its cause's traceback is kept for logs.
            outcome = exc.with_traceback(None)
        except Exception as exc:  # a tool loop's own failure, beyond any one tool's
            log.exception("turn %s: the tool loop failed", self.request_id)
            outcome = ProviderFailed("The model provider failed.")
            outcome.__cause__ = exc.with_traceback(None)
        finally:
            self._streaming = None
            await checkpoints.stop()
            if loop is not None:
                await loop.settle()  # its step checkpoints land before the final write
        if self.events.cut:
            if task.uncancel() > 0:
                raise asyncio.CancelledError
            return "cancelled"
        return outcome

    async def _finish(
        self, record: TurnRecord, answer: Answer, outcome: TurnStatus | ParleyError, loop: ToolLoop | None
    ) -> TurnStatus:
        status: TurnStatus
        error_code = None
        said_error = isinstance(outcome, ParleyError)
        if isinstance(outcome, ParleyError):
            status, error_code = "error", outcome.code
            self.events.error(outcome.stage, outcome.code, outcome.message)
            if outcome.stage == "provider":
                self.services.metrics.provider_error(outcome.code)
        else:
            status = outcome
            if status == "cancelled":
                error_code = self.stop_code
                self._say_cancelled()  # said already if it was cut while streaming
        usage = dict(answer.usage) or None
        self.services.metrics.tokens(usage)
        try:
            stored = await self.services.store.finish_turn(
                session_id=record.session_id,
                ai_message_id=record.ai_message_id,
                content=answer.content,
                reasoning=answer.reasoning_text,
                status=status,
                usage=usage,
                error_code=error_code,
                seq=self.log.last_seq(),
                tool_steps=loop.stored() if loop is not None else None,
            )
        except DatabaseFailed as exc:
            log.exception("turn %s: could not store the answer", self.request_id)
            return self._fail(exc, said_error)
        finally:
            self.log.live = None
        if not stored:  # closed by recovery meanwhile: this server was taken for dead (a long pause)
            log.warning("turn %s: its answer was closed as interrupted meanwhile", self.request_id)
            interrupted = DatabaseFailed(
                "This answer was closed as interrupted while this server was unresponsive; "
                "the stored answer is what it had then.",
                code="interrupted",
            )
            return self._fail(interrupted, said_error)
        self.events.db_operation(str(record.user_message_id), str(record.ai_message_id), status, usage)
        self.events.complete_turn(status)
        return status

    def _fail(self, error: ParleyError, said_error: bool = False) -> TurnStatus:
        """End with ``error`` (one per turn: not again when the turn said one already) and the end."""
        if not said_error:
            self.events.error(error.stage, error.code, error.message)
        self.events.complete_turn("error")
        return "error"
