"""The outbox: frames pushed in one turn of the loop go out in one write from a callback, a writer task
only waits for a full socket, and the urgent path (``push_now``) never overtakes what was pushed before.

Against a stand-in for uvicorn's websockets protocol with exactly the attributes ``DirectSend`` checks, so
the order of bytes handed to the transport is visible write by write.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

from parley.outbox import Outbox
from parley.uvicorn_ws import DirectSend


@dataclass
class FakeConn:
    pending: list[bytes] = field(default_factory=list)

    def send_text(self, data: bytes) -> None:
        self.pending.append(data + b"|")

    def data_to_send(self) -> list[bytes]:
        out, self.pending = self.pending, []
        return out


class FakeTransport:
    def __init__(self, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise ConnectionResetError("gone")
        self.writes.append(data)


class Writable(asyncio.Event):
    """uvicorn's ``writable`` that also tells the test when somebody waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.waited.set()
        return await super().wait()


class FakeProtocol:
    def __init__(self, fail: bool = False) -> None:
        self.conn = FakeConn()
        self.transport = FakeTransport(fail)
        self.writable = Writable()
        self.writable.set()
        self.close_sent = False
        self.disconnected = False

    async def receive(self) -> dict[str, Any]:
        raise AssertionError("not used")

    def frames(self) -> list[str]:
        return [f for w in self.transport.writes for f in w.decode().split("|") if f]


def outbox_on(proto: FakeProtocol, limit: int = 1 << 20) -> Outbox:
    async def asgi_send(message: dict[str, Any]) -> None:
        raise AssertionError("the direct path should be used")

    websocket = SimpleNamespace(_receive=proto.receive, send=asgi_send)
    outbox = Outbox(websocket, limit, stall_timeout_s=5.0)  # type: ignore[arg-type]
    assert isinstance(outbox._direct, DirectSend)  # the stand-in passes DirectSend's checks
    return outbox


async def test_frames_of_one_loop_turn_go_out_in_one_write_without_a_task() -> None:
    proto = FakeProtocol()
    outbox = outbox_on(proto)
    for frame in "abc":
        outbox.push(frame)
    assert proto.transport.writes == []  # nothing yet: the write is the loop's next turn
    await asyncio.sleep(0)
    assert proto.transport.writes == [b"a|b|c|"]
    assert outbox._writer is None  # no task was needed
    await asyncio.sleep(0)
    assert proto.transport.writes == [b"a|b|c|"]  # and nothing scheduled again for an empty queue
    await outbox.close()


async def test_a_full_socket_gets_a_writer_task_that_ends_with_the_queue() -> None:
    proto = FakeProtocol()
    outbox = outbox_on(proto)
    proto.writable.clear()
    outbox.push("x")
    await asyncio.sleep(0)
    assert outbox._writer is not None and proto.transport.writes == []
    outbox.push("y")  # the waiting writer takes it with the rest
    proto.writable.set()
    await outbox.flush(1.0)
    assert proto.frames() == ["x", "y"]
    await asyncio.sleep(0)
    assert outbox._writer is None
    await outbox.close()


async def test_push_now_writes_at_once_with_what_was_queued_first() -> None:
    proto = FakeProtocol()
    outbox = outbox_on(proto)
    outbox.push("a")
    outbox.push("b")
    outbox.push_now("c")
    # No await in between: the urgent frame and the two before it are on the transport already.
    assert proto.transport.writes == [b"a|b|c|"]
    outbox.push("d")
    await outbox.flush(1.0)
    assert proto.frames() == ["a", "b", "c", "d"]
    await outbox.close()


async def test_push_now_never_overtakes_a_batch_waiting_for_the_socket() -> None:
    proto = FakeProtocol()
    outbox = outbox_on(proto)
    proto.writable.clear()  # the kernel buffer is full: the writer's batch waits
    outbox.push("1")
    outbox.push("2")
    await asyncio.wait_for(proto.writable.waited.wait(), 1)  # the writer has taken [1, 2] and waits
    outbox.push_now("3")  # must not go out ahead of 1 and 2
    assert proto.transport.writes == []
    proto.writable.set()
    outbox.push_now("4")  # the writer still holds its batch: this queues behind it as well
    await outbox.flush(1.0)
    assert proto.frames() == ["1", "2", "3", "4"]
    await outbox.close()


async def test_push_now_queues_while_the_client_is_behind() -> None:
    proto = FakeProtocol()
    outbox = outbox_on(proto, limit=64)
    outbox.push("x" * 40)  # over the high-water mark (half the limit): congested
    assert outbox.congested
    outbox.push_now("urgent")
    assert proto.transport.writes == []  # waits its turn in the queue
    await outbox.flush(1.0)
    assert proto.frames() == ["x" * 40, "urgent"]
    await outbox.close()


async def test_push_now_on_a_closed_websocket_queues_and_a_failed_write_detaches() -> None:
    closed = FakeProtocol()
    closed.close_sent = True
    outbox = outbox_on(closed)
    outbox.push_now("late")
    assert closed.transport.writes == [] and not outbox.detached
    await outbox.close()

    broken = FakeProtocol(fail=True)
    dropped: list[bool] = []
    outbox = Outbox(
        SimpleNamespace(_receive=broken.receive, send=None),  # type: ignore[arg-type]
        1 << 20,
        stall_timeout_s=5.0,
        on_detach=lambda: dropped.append(True),
    )
    outbox.push_now("lost")
    assert outbox.detached and dropped == [True]
    outbox.push_now("after")  # a detached outbox takes nothing more, quietly
    assert broken.transport.writes == []
    await outbox.close()
