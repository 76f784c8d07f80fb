"""An event: what the device raises (onset, back to normal, sensor and machine states, commands).

Every event carries a unique ``id``; a consumer that sees the same id twice has seen the same
event twice (MQTT QoS 1 is at-least-once)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol

__all__ = ["Event", "Sink", "new_event_id", "utc_iso"]


def new_event_id() -> str:
    """A globally unique event id (UUID4, hex)."""
    return uuid.uuid4().hex


def utc_iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


@dataclass(frozen=True, kw_only=True)
class Event:
    """An event: alarm (``onset``, ``back_to_normal``) or sensor (``sensor_lost``, ``sensor_back``)."""

    id: str
    device: str
    kind: str
    time_utc: str
    """Wall-clock time the event was raised (ISO 8601, UTC)."""
    stream_time_s: float
    """Seconds of audio since the service started when the deciding period ended."""
    score: float | None
    """Score of the deciding period (``None`` for events no period decided, such as ``sensor_lost``)."""
    threshold: float
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, **kwargs: Any) -> "Event":
        return cls(id=new_event_id(), time_utc=utc_iso(time.time()), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "event", **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


class Sink(Protocol):
    """Something events are written to."""

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...
