"""The record every source yields: one message off the bus (or a file), with its carrier.

Sources over NATS, JetStream and recorded files all produce :class:`Message`, so
a flow does not care where its input came from. ``ts_recv`` is when *we* first
saw the bytes: the ``T26-Recv-Ns`` header when an upstream recorder stamped it,
otherwise the source's injected clock.
"""

from __future__ import annotations

import msgspec

#: Header carrying the original receive time (integer ns, UTC) through replays.
RECV_NS_HEADER = "T26-Recv-Ns"
#: Header JetStream uses to de-duplicate publishes within its window.
MSG_ID_HEADER = "Nats-Msg-Id"


class Message(msgspec.Struct, gc=False):
    subject: str
    data: bytes
    ts_recv: int
    headers: dict[str, str] | None = None
    reply: str | None = None
    #: JetStream stream sequence, or the line number for recorded files.
    seq: int | None = None


class Outgoing(msgspec.Struct, gc=False, array_like=True):
    """What a NATS sink publishes: a subject, the payload and optional headers."""

    subject: str
    data: bytes
    headers: dict[str, str] | None = None
