"""``parley chat``: a terminal client of our own protocol (docs/protocol.md), in the spirit of ``llm chat``.

Interactive at a terminal: a ``> `` prompt, the answer streamed as it comes, Ctrl-C stops the answer (a
``cancel``: the partial answer is kept and stored), ``/exit`` or Ctrl-D quits (exit 0), Ctrl-C at the
prompt quits with 130. ``-m TEXT`` (or text piped on stdin) asks once, prints only the answer and exits 0
when it completed, 1 otherwise. The wire side, reconnects and resume included, is in parley/chatlink.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from parley.auth import DEV_CUSTOMER, mint_token
from parley.chatlink import ChatFailure, Link, Outcome, Turn, chat_frame
from parley.chatlink import Settings as RequestSettings
from parley.config import Settings
from parley.preflight import ConfigError

DEFAULT_URL = "ws://127.0.0.1:8000/chat/ws"
DEV_TOKEN_TTL_S = 24 * 3600
PROMPT = "> "
EXIT_COMMANDS = frozenset({"/exit", "/quit"})
EXIT_INTERRUPTED = 130  # Ctrl-C at the prompt: the shell's convention for SIGINT
DIM, PLAIN = "\x1b[2m", "\x1b[0m"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    chat = commands.add_parser("chat", help="talk to a Parley server from the terminal", parents=[common])
    chat.add_argument("-m", "--message", help="ask once, print the answer and exit (0 completed, 1 not)")
    chat.add_argument("--session", metavar="ID", help="continue this session (default: a new one)")
    chat.add_argument("--model", help="the model to ask (default: the server's, demo)")
    chat.add_argument("--system", help="a system prompt for each turn")
    chat.add_argument(
        "--tool", action="append", default=[], metavar="NAME", help="a tool the model may call (repeatable)"
    )
    chat.add_argument(
        "-o",
        "--option",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        default=[],
        help="a provider option (VALUE read as JSON if it parses), e.g. -o delay_ms 50",
    )
    chat.add_argument("--url", help=f"the server's WebSocket (default $BACKEND_WS_URL, else {DEFAULT_URL})")
    chat.add_argument(
        "--token", help="a JWT (default $JWT_TOKEN, else a customer-1 token signed with the dev secret)"
    )


@dataclass(frozen=True)
class ChatConfig:
    url: str
    token: str
    session_id: str | None
    asks: RequestSettings


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``chat`` command; a configuration mistake raises ConfigError (exit 2)."""
    config = ChatConfig(
        url=_url(args.url),
        token=_token(settings, args.token or os.environ.get("JWT_TOKEN")),
        session_id=args.session,
        asks=RequestSettings(args.model, args.system, tuple(args.tool), _options(args.option)),
    )
    try:
        message = args.message
        if message is None and not sys.stdin.isatty():
            message = sys.stdin.read()
        if message is not None and not message.strip():
            raise ConfigError("nothing to ask: the message is empty")
        return asyncio.run(_main(config, message))
    except KeyboardInterrupt:  # before a turn or a prompt was there to take it
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


def _url(given: str | None) -> str:
    url = given or os.environ.get("BACKEND_WS_URL") or DEFAULT_URL
    if not url.startswith(("ws://", "wss://")):
        source = "--url" if given else "BACKEND_WS_URL"
        raise ConfigError(f"{source}={url!r}: a WebSocket URL starts with ws:// or wss://")
    return url


def _token(settings: Settings, given: str | None) -> str:
    """The given token, else one for customer 1 signed with the configured or the dev server's secret."""
    if given:
        return given.strip()
    secret = settings.signing_secret()
    if secret is None:
        raise ConfigError(
            f"no token: give --token (or JWT_TOKEN), or start `parley serve --dev` with this PARLEY_DATA_DIR "
            f"({settings.data_dir}) so there is a dev secret to sign one with"
        )
    return mint_token(secret, DEV_CUSTOMER, DEV_TOKEN_TTL_S, settings.jwt_audience, settings.jwt_issuer)


def _options(pairs: list[list[str]]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in pairs:
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


async def _main(config: ChatConfig, message: str | None) -> int:
    link = Link(config.url, config.token)
    try:
        await link.open()
        if message is not None:
            return await _ask_once(link, config, message)
        return await Conversation(link, config).run()
    except ChatFailure as exc:
        print(f"parley: {exc}", file=sys.stderr, flush=True)
        return 1
    except asyncio.CancelledError:  # a second Ctrl-C while an answer would not stop
        print("\nparley: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        await link.close()


async def _ask_once(link: Link, config: ChatConfig, message: str) -> int:
    """``-m``: only the answer on stdout; an error, or the cancel of a Ctrl-C, as one line on stderr."""
    turn = Turn(link, chat_frame(message, config.session_id, config.asks))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop_answer, turn, asyncio.current_task())
    try:
        outcome = await turn.run(Terminal(sys.stdout, decorated=False))
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if outcome.text and not outcome.text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    if outcome.status == "completed":
        return 0
    print(f"parley: {outcome.error or 'the answer was ' + outcome.status}", file=sys.stderr, flush=True)
    return 1


def stop_answer(turn: Turn, main: asyncio.Task[Any] | None) -> None:
    """Ctrl-C during an answer: the first asks the server to stop it, a second quits at once."""
    if turn.cancel_requested and main is not None:
        main.cancel()
    else:
        turn.cancel()


class Terminal:
    """Prints a turn: text as it comes; reasoning and tool steps dimmed, only when ``decorated``."""

    def __init__(self, out: TextIO, decorated: bool) -> None:
        self.out = out
        self.decorated = decorated
        self.dim = decorated and out.isatty()
        self.at_line_start = True
        self.in_reasoning = False

    def text(self, delta: str) -> None:
        if self.in_reasoning:  # the answer starts on a line of its own, after the dimmed reasoning
            self.in_reasoning = False
            self.end_line()
        self._write(delta)

    def reasoning(self, delta: str) -> None:
        if self.decorated:
            self.in_reasoning = True
            self._write(self._styled(delta))

    def step(self, line: str) -> None:
        if self.decorated:
            self.line(line)

    def notice(self, line: str) -> None:
        if self.decorated:  # on a terminal stderr shares the screen: not in the middle of a line
            self.end_line()
        print(f"parley: {line}", file=sys.stderr, flush=True)

    def line(self, line: str) -> None:
        """A line of its own, dimmed: after the answer's text, never inside it."""
        self.in_reasoning = False
        self.end_line()
        self._write(self._styled(line) + "\n")

    def end_line(self) -> None:
        if not self.at_line_start:
            self._write("\n")

    def _styled(self, text: str) -> str:
        return f"{DIM}{text}{PLAIN}" if self.dim else text

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.at_line_start = text.endswith("\n")


class Conversation:
    """The interactive loop: lines from stdin and Ctrl-C arrive on one queue; one turn runs at a time."""

    def __init__(self, link: Link, config: ChatConfig) -> None:
        self.link = link
        self.config = config
        self.session_id = config.session_id
        self.screen = Terminal(sys.stdout, decorated=True)
        self.inbox: asyncio.Queue[str | KeyboardInterrupt | None] = asyncio.Queue()
        self.turn: Turn | None = None
        self._pending = b""
        self._main: asyncio.Task[Any] | None = None

    async def run(self) -> int:
        self._main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        loop.add_reader(sys.stdin.fileno(), self._read_stdin)
        try:
            return await self._loop()
        finally:
            loop.remove_reader(sys.stdin.fileno())
            loop.remove_signal_handler(signal.SIGINT)

    async def _loop(self) -> int:
        model = self.config.asks.model or "the server's default model"
        where = f"session {self.session_id}" if self.session_id else "a new session"
        self.screen.line(f"Chatting with {model} at {self.config.url}, {where}.")
        self.screen.line("Ctrl-C stops an answer; /exit or Ctrl-D quits.")
        while True:
            self.screen._write(PROMPT)
            item = await self.inbox.get()
            if isinstance(item, KeyboardInterrupt):
                self.screen._write("\n")
                return EXIT_INTERRUPTED
            if item is None or item.strip() in EXIT_COMMANDS:
                self.screen.end_line()
                return 0
            if item.strip():
                await self._ask(item.rstrip("\n"))

    async def _ask(self, prompt: str) -> None:
        self.turn = Turn(self.link, chat_frame(prompt, self.session_id, self.config.asks))
        try:
            outcome = await self.turn.run(self.screen)
        finally:
            self.turn = None
        self._report(outcome)

    def _report(self, outcome: Outcome) -> None:
        if outcome.status == "cancelled":
            self.screen.line("[cancelled: the partial answer is kept]")
        elif outcome.status == "error":
            self.screen.line(f"[error: {outcome.error or 'the answer failed'}]")
        else:
            self.screen.end_line()
        if outcome.session_id and outcome.session_id != self.session_id:
            self.session_id = outcome.session_id
            self.screen.line(
                f"[session {outcome.session_id}: continue it with --session {outcome.session_id}]"
            )

    def _interrupt(self) -> None:
        if self.turn is not None:
            stop_answer(self.turn, self._main)
        else:
            self.inbox.put_nowait(KeyboardInterrupt())

    def _read_stdin(self) -> None:
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:  # Ctrl-D at the start of a line, or the end of piped input
            if self._pending:
                self.inbox.put_nowait(self._pending.decode(errors="replace"))
            self.inbox.put_nowait(None)
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            return
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self.inbox.put_nowait(line.decode(errors="replace"))
