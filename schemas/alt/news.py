"""News headlines with a sentiment score from an upstream model."""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.common import Nanos

#: Model sentiment in [-1, 1]; a score, not money, so a float is fine.
Sentiment = Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]


class NewsHeadline(msgspec.Struct, frozen=True):
    """One headline. Unknown fields are allowed: they become new optional columns."""

    headline_id: str
    source: str
    headline: str
    sentiment: Sentiment
    ts_event: Nanos
    instruments: list[str] = msgspec.field(default_factory=list)
    url: str | None = None
