"""Events: what the device raises, and where it goes.

Takes events and closed periods; gives JSON lines on stdout (:mod:`~edge_asd.events.stdout`), the
durable SQLite store and outbox (:mod:`~edge_asd.events.store`), the MQTT forwarder
(:mod:`~edge_asd.events.mqtt`) with Home Assistant discovery (:mod:`~edge_asd.events.discovery`),
and the state file and metrics of ``edge-asd status`` (:mod:`~edge_asd.events.health`).

The names below were ``edge_asd.events``' and are importable from here.
"""

from edge_asd.events.event import Event, Sink, new_event_id, utc_iso
from edge_asd.events.mqtt import MqttForwarder
from edge_asd.events.stdout import StdoutSink
from edge_asd.events.store import SQLiteStore, StoreError

__all__ = ["Event", "Sink", "StdoutSink", "SQLiteStore", "MqttForwarder", "StoreError", "new_event_id", "utc_iso"]
