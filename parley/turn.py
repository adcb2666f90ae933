"""One chat turn, start to finish: validate → persist the question → stream the model → persist → events.

A turn knows nothing of sockets: it writes events to a ``Channel``, which the connection drains. A request
that selects tools streams through a ``ToolLoop`` (parley/agent.py) instead of ``_pump``: same stages, same
closing events, one model call per step; a turn without tools never touches it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from parley.agent import ToolLoop, history_messages, step_limit
from parley.answer import Answer, Checkpointer, TextSender
from parley.auth import Identity
from parley.config import Dialect, Settings
from parley.context import build_context
from parley.errors import (
    DatabaseFailed,
    Forbidden,
    LimitExceeded,
    ParleyError,
    ProviderFailed,
    ValidationFailed,
)
from parley.protocol import ChatRequest, TurnEmitter, TurnStatus, describe_validation_error, join_text
from parley.providers.base import (
    ChatMessage,
    ProviderRequest,
    ReasoningDelta,
    TextDelta,
    Usage,
    stream_with_retries,
)
from parley.providers.registry import ModelRegistry, Resolved
from parley.store.repository import ContextMessage, Store, TurnRecord, parse_uuid
from parley.tasks import Supervisor
from parley.titles import schedule_title
from parley.tools import ToolContext, ToolRegistry, ToolSelection

log = logging.getLogger("parley.turn")

DEFAULT_MODEL = "demo"


class Channel(Protocol):
    """Where a turn's encoded events go. ``congested`` asks the turn to ``wait_ready`` before more."""

    congested: bool

    def push(self, data: str) -> None: ...

    def push_now(self, data: str) -> None:
        """``push``, and onto the socket at once where nothing stands before it (see ``Outbox``)."""
        ...

    async def wait_ready(self) -> None: ...


@dataclass
class TurnServices:
    """What every turn needs; built once by the app's lifespan."""

    settings: Settings
    store: Store
    registry: ModelRegistry
    supervisor: Supervisor | None = None  # owns work that outlives a turn (model-written titles)
    tools: ToolRegistry = field(default_factory=ToolRegistry)  # built-ins and MCP tools, for agentic turns


def request_id_of(raw: dict[str, Any]) -> str:
    """The client's request_id; a number is echoed as text (so the refusal it earns can be matched)."""
    value = raw.get("request_id")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else uuid.uuid4().hex


class Turn:
    """A chat request from arrival to ``fullProcessComplete``."""

    def __init__(
        self, raw: dict[str, Any], identity: Identity, services: TurnServices, dialect: Dialect, out: Channel
    ) -> None:
        self.raw = raw
        self.identity = identity
        self.services = services
        self.out = out
        self.request_id = request_id_of(raw)
        self.events = TurnEmitter(dialect, self.request_id, out.push, out.push_now)
        self.cancel_requested = False
        self._stream_task: asyncio.Task[None] | None = None  # a tool loop's
        self._streaming: asyncio.Task[Any] | None = None  # the turn's own task, while a plain turn streams
        self._cut = False  # ``cancel`` cancelled ``_streaming``
        self._text: TextSender | None = None  # a plain turn's, while it streams
        self._cancel_sent = False

    def cancel(self) -> None:
        """Stop streaming now; before streaming starts, stop it from starting. After it, no effect.

        A plain turn that is streaming says ``cancelled`` here and now, from the reader's task: its text
        is cut at what was sent (nothing more gets out), so the client need not wait for the stream to
        wind down, which under load is a few turns of a busy event loop later. A tool-using turn first
        answers its open calls, so its ``cancelled`` comes from ``_finish``.
        """
        self.cancel_requested = True
        if self._streaming is not None:
            if self._cut:
                return
            self._cut = True
            self._streaming.cancel()  # taken back by ``_stream_plain`` (``uncancel``)
            if self._text is not None and not self.events.complete:
                self._text.close()
                self.events.cancelled()
                self._cancel_sent = True
        elif self._stream_task is not None and not self._stream_task.done():
            self._stream_task.cancel()

    def refuse(self, error: ParleyError) -> None:
        """End a turn that will not run (queue full, server shutting down) with its full bracket."""
        self._announce()
        self._fail(error)

    async def run(self) -> TurnStatus:
        """Run the turn to its end; whatever happens, the client gets the closing events."""
        try:
            return await self._run()
        except Exception:
            log.exception("turn %s failed unexpectedly", self.request_id)
            if self.events.complete:
                return "error"
            return self._fail(ParleyError("Something went wrong on the server; the details are logged."))

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
        self.events.session_id = str(record.session_id)
        answer = Answer()
        loop = self._tool_loop(request, resolved, tools, answer, record) if tools else None
        outcome = await self._stream(
            self._provider_request(request, resolved, record, tools), resolved, answer, record, loop
        )
        status = await self._finish(record, answer, outcome, loop)
        if status == "completed" and record.new_session:
            schedule_title(self.services, resolved, record, answer.content)
        return status

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
        provider = resolved.provider.name if isinstance(resolved, Resolved) else None
        self.events.working(request_type if isinstance(request_type, str) else "text", model, provider)
        return resolved

    async def _validate(
        self, resolved: Resolved | ParleyError
    ) -> tuple[ChatRequest, Resolved, ToolSelection | None]:
        try:
            request = ChatRequest.model_validate(self.raw)
        except ValidationError as exc:
            raise ValidationFailed(f"Invalid request: {describe_validation_error(exc)}") from None
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
            raise ValidationFailed(f"Session {session_id[:64]!r} was not found.", code="session_not_found")
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

    def _tool_loop(
        self,
        request: ChatRequest,
        resolved: Resolved,
        tools: ToolSelection,
        answer: Answer,
        record: TurnRecord,
    ) -> ToolLoop:
        settings = self.services.settings
        return ToolLoop(
            events=self.events,
            out=self.out,
            answer=answer,
            provider=resolved.provider,
            selection=tools,
            # The customer is the token's: a tool reaching stored data sees only this customer's sessions.
            context=ToolContext(self.identity.customer_id, self.services.store.search.messages),
            max_steps=step_limit(request.user_settings.text.max_steps, settings.max_tool_steps),
            store=self.services.store,
            message_id=record.ai_message_id,
            coalesce_s=settings.coalesce_ms / 1000,
            attempts=settings.provider_attempts,
            backoff_s=settings.provider_retry_backoff_s,
        )

    async def _stream(
        self,
        request: ProviderRequest,
        resolved: Resolved,
        answer: Answer,
        record: TurnRecord,
        loop: ToolLoop | None = None,
    ) -> TurnStatus | ParleyError:
        if self.cancel_requested:
            return "cancelled"
        checkpoints = Checkpointer(
            self.services.store, record.ai_message_id, answer, self.services.settings.checkpoint_interval_s
        )
        try:
            if loop is None:
                return await self._stream_plain(request, resolved, answer)
            return await self._stream_tools(loop, request)
        finally:
            await checkpoints.stop()
            if loop is not None:
                await loop.settle()  # its step checkpoints land before the final write

    async def _stream_plain(
        self, request: ProviderRequest, resolved: Resolved, answer: Answer
    ) -> TurnStatus | ParleyError:
        """A plain turn streams in the turn's own task: no task to start, so under load the first text is
        a turn of the event loop sooner. ``cancel`` cancels this task while it streams, and only then; the
        cancellation is taken back here, unless someone else (the server shutting down) asked for one too.
        """
        task = asyncio.current_task()
        assert task is not None
        outcome: TurnStatus | ParleyError = "completed"
        self._streaming = task
        try:
            await self._pump(request, resolved, answer)
        except asyncio.CancelledError:
            if not self._cut:
                raise
        except ParleyError as exc:
            outcome = exc
        finally:
            self._streaming = None
        if self._cut:
            if task.uncancel() > 0:
                raise asyncio.CancelledError
            return "cancelled"
        return outcome

    async def _stream_tools(self, loop: ToolLoop, request: ProviderRequest) -> TurnStatus | ParleyError:
        """A tool loop runs in a task of its own: a cancel must not stop it midway, it answers its open
        calls first (see ``ToolLoop``)."""
        self._stream_task = task = asyncio.create_task(loop.run(request))
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.cancelled():
            return "cancelled"
        error = task.exception()
        if error is None:
            return "completed"
        return error if isinstance(error, ParleyError) else ProviderFailed("The model provider failed.")

    async def _pump(self, request: ProviderRequest, resolved: Resolved, answer: Answer) -> None:
        """Provider events → client events. The hot path: no database, no logging, no needless awaits."""
        events, out = self.events, self.out
        settings = self.services.settings
        text = self._text = TextSender(events.text, answer, settings.coalesce_ms / 1000)
        stream = stream_with_retries(
            resolved.provider, request, settings.provider_attempts, settings.provider_retry_backoff_s
        )
        try:
            async for item in stream:
                if isinstance(item, TextDelta):
                    if item.text:
                        text.add(item.text)
                elif isinstance(item, ReasoningDelta):
                    if item.text:
                        text.reasoning(item.text, events.reasoning)
                elif isinstance(item, Usage):
                    answer.add_usage(item)
                # No tool events: a request offering tools runs in a ToolLoop (parley/agent.py) instead.
                if out.congested:
                    await out.wait_ready()
        except ParleyError:
            raise
        except Exception as exc:  # an unmapped provider failure: log it all, tell the client little
            log.exception("turn %s: provider %s failed", self.request_id, resolved.provider.name)
            raise ProviderFailed("The model provider failed.") from exc
        finally:
            text.flush()  # what arrived goes out before the turn's closing events, also on cancel
            await stream.aclose()

    async def _finish(
        self, record: TurnRecord, answer: Answer, outcome: TurnStatus | ParleyError, loop: ToolLoop | None
    ) -> TurnStatus:
        status: TurnStatus
        error_code = None
        if isinstance(outcome, ParleyError):
            status, error_code = "error", outcome.code
            self.events.error(outcome.stage, outcome.code, outcome.message)
        else:
            status = outcome
            if status == "cancelled" and not self._cancel_sent:
                self.events.cancelled()
        usage = dict(answer.usage) or None
        try:
            await self.services.store.finish_turn(
                session_id=record.session_id,
                ai_message_id=record.ai_message_id,
                content=answer.content,
                reasoning=answer.reasoning_text,
                status=status,
                usage=usage,
                error_code=error_code,
                tool_steps=loop.stored() if loop is not None else None,
            )
        except DatabaseFailed as exc:
            log.exception("turn %s: could not store the answer", self.request_id)
            return self._fail(exc)
        self.events.db_operation(str(record.user_message_id), str(record.ai_message_id), status, usage)
        self.events.complete_turn(status)
        return status

    def _fail(self, error: ParleyError) -> TurnStatus:
        self.events.error(error.stage, error.code, error.message)
        self.events.complete_turn("error")
        return "error"
