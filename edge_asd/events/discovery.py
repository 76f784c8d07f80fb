"""MQTT conventions: the topic layout, Home Assistant discovery and the retained current state.

Pure functions from the device's settings and what it has seen to MQTT messages
``(topic, payload, retain, qos)``; :class:`edge_asd.events.MqttForwarder` publishes them. Nothing
here touches the network, so every message can be checked without a broker.

Topics under ``<topic_prefix>/<device id>`` (see :class:`DeviceTopics`):

- ``events``: every event as JSON, QoS 1, store-and-forward from the SQLite outbox (not here);
- ``status``: ``online`` / ``offline``, retained, the broker's last will says ``offline``;
- ``state``: ``starting``, ``running``, ``idle`` or ``sensor_fault``, retained;
- ``anomaly``: ``ON`` while an anomaly alarm is open (from onset to back-to-normal), else ``OFF``;
- ``score``: the last period score (a number), retained;
- ``evidence``: the evidence of a small persistent fault, percent of the alarm level (0-100), retained;
- ``<state|anomaly|score|evidence>/attributes``: JSON with the context of each (threshold, reason,
  ids, the evidence statistic and its alarm level).

The current state is retained, so a dashboard that subscribes later shows it at once. It is a
level, not an event: each new value replaces the last, and the forwarder publishes the whole
current state again on every (re)connection. It is therefore sent with QoS 0: paho would resend
a QoS 1 message queued during an outage *after* the fresh values published on reconnection, and
an old state would win.

Home Assistant discovery (``mqtt.discovery``, on by default): one retained config per entity at
``<discovery_prefix>/<component>/<device id>/<object id>/config``, all on one HA device per
detector, with the status topic as their availability. See :func:`discovery_messages`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "Message",
    "DeviceTopics",
    "LiveState",
    "MACHINE_STATES",
    "discovery_messages",
    "apply_event",
    "apply_period",
    "evidence_attributes",
    "machine_state",
    "state_messages",
]

MODEL = "edge-asd"
"""The HA device's model and the origin named in every discovery config."""
STATE_QOS = 0
"""QoS of the retained current state (see the module docstring for why not 1)."""
DISCOVERY_QOS = 1
"""QoS of the discovery configs (identical on every connection, so a resend is harmless)."""
MACHINE_STATES = ("starting", "running", "idle", "sensor_fault")
"""Values of the ``state`` topic: no period closed yet; running; the machine is switched off;
the sensor (microphone, capture device) is faulty or lost, so nothing is known of the machine."""


@dataclass(frozen=True)
class Message:
    """One MQTT publication."""

    topic: str
    payload: str
    retain: bool
    qos: int


@dataclass(frozen=True, kw_only=True)
class DeviceTopics:
    """The topics of one device under ``<topic_prefix>/<device_id>``."""

    topic_prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.topic_prefix}/{self.device_id}"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def anomaly(self) -> str:
        return f"{self.base}/anomaly"

    @property
    def score(self) -> str:
        return f"{self.base}/score"

    @property
    def evidence(self) -> str:
        """Evidence of a small persistent fault, percent of the evidence rule's alarm level."""
        return f"{self.base}/evidence"

    @property
    def command(self) -> str:
        """Operator commands to the device (``mqtt.remote_commands``, :mod:`edge_asd.remote`)."""
        return f"{self.base}/command"

    @staticmethod
    def attributes(topic: str) -> str:
        """The JSON attributes topic that goes with a state topic."""
        return f"{topic}/attributes"


def _device_block(device_id: str, sw_version: str) -> dict[str, Any]:
    # The identifier carries the model name so that it cannot collide with another
    # integration's device that happens to share the device id.
    return {"identifiers": [f"{MODEL}-{device_id}"], "name": device_id, "model": MODEL,
            "manufacturer": MODEL, "sw_version": sw_version}


def discovery_messages(*, topics: DeviceTopics, discovery_prefix: str, sw_version: str) -> list[Message]:
    """The retained Home Assistant discovery configs of one device.

    Four entities on one HA device (``identifiers`` from the device id): a ``binary_sensor``
    ``anomaly`` (device class ``problem``: on while an anomaly alarm is open), a ``sensor``
    ``score`` (the period score, the threshold among its attributes), a ``sensor`` ``evidence``
    (percent of the evidence rule's alarm level: 100 % raises an onset) and an enum ``sensor``
    ``state`` (:data:`MACHINE_STATES`). Each ``unique_id`` is ``edge-asd-<device id>-<object id>``,
    so it stays the same across restarts and reinstalls of the same device. All four are
    unavailable while the status topic says ``offline``.
    """
    device = _device_block(topics.device_id, sw_version)
    common = {
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": {"name": MODEL, "sw_version": sw_version},
        # Retained state arrives at subscription; QoS 1 from the broker to HA is cheap here.
        "qos": 1,
    }
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("binary_sensor", "anomaly", {
            "name": "Anomaly", "device_class": "problem", "state_topic": topics.anomaly,
            "payload_on": "ON", "payload_off": "OFF",
            "json_attributes_topic": DeviceTopics.attributes(topics.anomaly),
        }),
        ("sensor", "score", {
            "name": "Score", "state_topic": topics.score, "state_class": "measurement",
            "suggested_display_precision": 2, "json_attributes_topic": DeviceTopics.attributes(topics.score),
        }),
        ("sensor", "evidence", {
            "name": "Evidence", "state_topic": topics.evidence, "state_class": "measurement",
            "unit_of_measurement": "%", "suggested_display_precision": 0, "icon": "mdi:chart-bell-curve-cumulative",
            "json_attributes_topic": DeviceTopics.attributes(topics.evidence),
        }),
        ("sensor", "state", {
            "name": "State", "device_class": "enum", "options": list(MACHINE_STATES),
            "state_topic": topics.state, "json_attributes_topic": DeviceTopics.attributes(topics.state),
        }),
    ]
    out = []
    for component, object_id, fields in entities:
        payload = {**fields, "unique_id": f"{MODEL}-{topics.device_id}-{object_id}", **common}
        out.append(Message(topic=f"{discovery_prefix}/{component}/{topics.device_id}/{object_id}/config",
                           payload=json.dumps(payload, sort_keys=True, separators=(",", ":")),
                           retain=True, qos=DISCOVERY_QOS))
    return out


@dataclass(frozen=True, kw_only=True)
class LiveState:
    """What the device currently knows, as the state topics show it (immutable: each change
    makes a new one with :func:`apply_event` or :func:`apply_period`)."""

    started: bool = False
    """A period closed or a state event arrived since the service started."""
    sensor_fault: str | None = None
    """The reason of an open sensor fault (``silence``, ``clipping``, ...), else ``None``."""
    sensor_lost: bool = False
    """The capture device is gone (between ``sensor_lost`` and ``sensor_back``)."""
    idle: bool = False
    """The machine is switched off (between ``machine_idle`` and ``machine_running``)."""
    state_since_utc: str | None = None
    """When the last state event was raised (ISO 8601, UTC)."""
    anomaly: bool = False
    """An anomaly alarm is open."""
    onset_id: str | None = None
    """The open alarm's onset event id (after back-to-normal: the one that closed, with ``anomaly`` false)."""
    anomaly_since_utc: str | None = None
    """When the alarm opened (or closed, once it has)."""
    score: float | None = None
    """The last period's score (``None`` before the first, or when it had no valid window)."""
    score_attributes: Mapping[str, Any] | None = None
    """Threshold and context of the last period."""
    evidence: float | None = None
    """Evidence after the last period, share (0-1) of the evidence rule's alarm level (``None``: no rule)."""
    evidence_attributes: Mapping[str, Any] | None = None
    """The statistic and its alarm level (standard deviations of the normal period scores)."""


def machine_state(live: LiveState) -> str:
    """The ``state`` value: a faulty sensor first (it hides the machine), then idle, then running."""
    if live.sensor_fault is not None or live.sensor_lost:
        return "sensor_fault"
    if live.idle:
        return "idle"
    return "running" if live.started else "starting"


def apply_event(live: LiveState, *, kind: str, event_id: str, time_utc: str,
                details: Mapping[str, Any] | None = None) -> LiveState:
    """The state after an event; kinds that change nothing shown (``store_error``) leave it as is."""
    details = details or {}
    change: dict[str, Any]
    if kind == "onset":
        change = {"anomaly": True, "onset_id": event_id, "anomaly_since_utc": time_utc}
    elif kind == "back_to_normal":
        # A resumed alarm's back-to-normal names its onset; keep that id for the attributes.
        change = {"anomaly": False, "onset_id": details.get("onset_id", live.onset_id), "anomaly_since_utc": time_utc}
    elif kind == "sensor_fault":
        change = {"sensor_fault": str(details.get("reason", "sensor_fault"))}
    elif kind == "sensor_ok":
        change = {"sensor_fault": None}
    elif kind == "sensor_lost":
        change = {"sensor_lost": True}
    elif kind == "sensor_back":
        change = {"sensor_lost": False}
    elif kind == "machine_idle":
        change = {"idle": True}
    elif kind == "machine_running":
        change = {"idle": False}
    else:
        return live
    if kind not in ("onset", "back_to_normal"):
        change["state_since_utc"] = time_utc
    return dataclasses.replace(live, started=True, **change)


def apply_period(live: LiveState, *, score: float, threshold: float, start_s: float, end_s: float,
                 decided: bool, anomalous: bool, reason: str = "", evidence: float | None = None,
                 evidence_attributes: Mapping[str, Any] | None = None) -> LiveState:
    """The state after a closed period: its score and, as attributes, the threshold and context."""
    attributes: dict[str, Any] = {"threshold": float(threshold), "start_s": round(start_s, 3), "end_s": round(end_s, 3),
                                  "decided": decided, "anomalous": anomalous}
    if not decided:
        attributes["reason"] = reason
    return dataclasses.replace(live, started=True, score=score if math.isfinite(score) else None,
                               score_attributes=attributes, evidence=evidence, evidence_attributes=evidence_attributes)


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def state_messages(topics: DeviceTopics, live: LiveState) -> list[Message]:
    """The retained messages that show ``live``: state, anomaly and score with their attributes.

    The score is left out until a period had one (a retained number from the previous run is
    then still the last score there was)."""
    state_attrs: dict[str, Any] = {"since_utc": live.state_since_utc}
    if live.sensor_fault is not None:
        state_attrs["reason"] = live.sensor_fault
    elif live.sensor_lost:
        state_attrs["reason"] = "sensor_lost"
    out = [
        Message(topics.state, machine_state(live), True, STATE_QOS),
        Message(DeviceTopics.attributes(topics.state), _json(state_attrs), True, STATE_QOS),
        Message(topics.anomaly, "ON" if live.anomaly else "OFF", True, STATE_QOS),
        Message(DeviceTopics.attributes(topics.anomaly),
                _json({"onset_id": live.onset_id, "since_utc": live.anomaly_since_utc}), True, STATE_QOS),
    ]
    if live.score_attributes is not None:
        if live.score is not None:
            out.append(Message(topics.score, format(float(live.score), ".6g"), True, STATE_QOS))
        out.append(Message(DeviceTopics.attributes(topics.score), _json(live.score_attributes), True, STATE_QOS))
    if live.evidence is not None:
        out.append(Message(topics.evidence, format(100 * float(live.evidence), ".1f"), True, STATE_QOS))
        out.append(Message(DeviceTopics.attributes(topics.evidence), _json(live.evidence_attributes or {}), True, STATE_QOS))
    return out


def evidence_attributes(result: Any) -> dict[str, Any] | None:
    """The ``evidence`` topic's attributes from a closed period (``None`` without an evidence rule)."""
    if result.evidence is None:
        return None
    return {"statistic": round(float(result.evidence), 4), "alarm_level": round(float(result.evidence_level), 4),
            "end_s": round(float(result.end_s), 3)}
