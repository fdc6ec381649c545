"""Declared schemas of the alternative-data sources on ``alt.raw.<source>``.

Each source names a msgspec Struct that every record must satisfy; the declared fields
become the Delta table's columns (``alt/<source>``). Extra fields are not errors: a new
field evolves the table schema as a nullable column. See :mod:`sinks.alt`.
"""

from __future__ import annotations

import msgspec

from schemas.alt.funding import FundingRate
from schemas.alt.news import NewsHeadline


class AltSource(msgspec.Struct, frozen=True):
    name: str
    record_type: type
    #: Integer-ns UTC event time; its UTC day is the partition.
    time_field: str = "ts_event"


ALT_SOURCES: dict[str, AltSource] = {
    "funding": AltSource("funding", FundingRate),
    "news": AltSource("news", NewsHeadline),
}

__all__ = ["ALT_SOURCES", "AltSource", "FundingRate", "NewsHeadline"]
