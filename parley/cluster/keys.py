"""Where a turn lives in Redis. Cluster-compatible: one turn's keys share a hash tag
(``{t:<customer>:<request_id>}``), the process registry has its own (``{procs}``)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from parley.streams import TurnLog

CHANNEL = "parley:cancel:"  # + the owner's process id: cancels of its turns
DELETED = "parley:deleted"  # sessions and branches deleted, for the turns writing into them
PROCS = "parley:{procs}"  # sorted set: process id -> its last heartbeat (ms, Redis's clock)


def turn_tag(customer_id: str, request_id: str) -> str:
    """One turn's hash tag. The customer's length first: no two (customer, request_id) pairs make the same
    tag, whatever they hold."""
    return f"{{t:{len(customer_id)}:{customer_id}:{request_id}}}"


def log_key(customer_id: str, request_id: str) -> str:
    return f"parley:{turn_tag(customer_id, request_id)}:log"


def meta_key(customer_id: str, request_id: str) -> str:
    return f"parley:{turn_tag(customer_id, request_id)}:meta"


def message_key(message_id: uuid.UUID | str) -> str:
    return f"parley:{{m:{message_id}}}"


def turns_key(process_id: str) -> str:
    return f"{PROCS}:turns:{process_id}"


def keys_of(turn_log: TurnLog) -> tuple[str, str]:
    """A turn's stream and meta hash."""
    return log_key(turn_log.customer_id, turn_log.request_id), meta_key(
        turn_log.customer_id, turn_log.request_id
    )


def member(customer_id: str, request_id: str) -> bytes:
    return orjson.dumps([customer_id, request_id])
