"""Scale-out: Parley processes that share one PostgreSQL database and one Redis (``PARLEY_REDIS_URL``) behave
as one server. Redis carries what a turn has beyond its rows: its event log, its cancel and its owner.

**The log.** A turn's events are logged in its own process first (parley/streams.py), and that process's
connections are served from there, never through Redis. Every ``FLUSH_S`` (at once for an urgent event:
``working``, the first text, ``cancelled``, the end) the new events of every turn go to Redis in one
pipeline, each turn's as one stream entry: the batch's kinds, its bodies joined and their end offsets, the
layout the in-process log seals its chunks in. An entry's id is ``0-<seq after its last event>``, so Redis
refuses an entry that repeats or goes back; the append script also checks that the batch starts where the
stream ends and that the appender still owns the turn (the fence: a process that lost its turn to recovery,
after a pause longer than its lease, cannot write after the turn was closed). No delta waits for Redis.

**Elsewhere.** ``resume`` on a process that does not run the turn makes a *replica*: a log like the owner's,
filled from the stream and then fed by a blocking ``XREAD``, which that process's followers follow as they
would a local turn (same replay, same dialects, no duplicate and no gap: seqs are the owner's). A cancel
names the turn in its meta hash and publishes to its owner's channel; the owner also sees the flag at its
next flush or heartbeat, should the message be lost. REST's view of an answer streaming elsewhere is
rebuilt from its stream.

**Owners.** Each process renews its entry in a sorted set every quarter of ``PARLEY_OWNER_LEASE_S``, with
the set of its running turns. A process silent for three quarters of the lease is dead: another claims its
turns, closes each answer with the text from the log (``error``/``interrupted``), and appends ``error``,
``dbOperationExecuted`` and the final event, so that clients following it elsewhere end cleanly.

**Keys.** Cluster-compatible: one turn's keys share a hash tag (``{t:<customer>:<request_id>}``), the
process registry has its own (``{procs}``). A running turn's keys live ``PARLEY_RESUME_TTL_S`` plus the lease
and are renewed; an ended turn's expire ``PARLEY_RESUME_TTL_S`` after its end.

**Redis down.** Turns go on streaming to their own clients and are stored; their events wait in their own
logs and are sent when Redis is back (a stream Redis lost is written again from the turn's first kept
event). A cross-process resume or cancel gets ``cluster_unavailable`` meanwhile. Every call has a timeout;
nothing waits on Redis in the event loop's hot path.

The parts: ``keys`` (where a turn lives), ``scripts`` (the Lua that appends, fences, cancels, beats),
``batches`` (a batch of events as one stream entry), ``link`` (the clients and reachability), ``mirrors``
(this process's turns, flushed), ``replicas`` (others' turns, followed), ``takeover`` (dead processes'
turns, closed), ``process`` (this process's part, as the app's lifespan starts and closes it).
"""

from parley.cluster.keys import PROCS, log_key, meta_key, turn_tag
from parley.cluster.link import ClusterUnavailable
from parley.cluster.process import Cluster

__all__ = ["PROCS", "Cluster", "ClusterUnavailable", "log_key", "meta_key", "turn_tag"]
