"""Events and the live state to an MQTT broker (the fleet view), store-and-forward from the store's
outbox, MQTT 5, TLS and logins; Home Assistant discovery (:mod:`edge_asd.events.discovery`); the
command topic handed to remote operations."""

from __future__ import annotations

import logging
import sqlite3
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from edge_asd import __version__
from edge_asd.errors import ConfigError
from edge_asd.events.discovery import (DeviceTopics, LiveState, apply_event, apply_period, discovery_messages,
                                       evidence_attributes, state_messages)
from edge_asd.events.event import Event
from edge_asd.events.store import SQLiteStore, StoreError

__all__ = ["MqttForwarder"]

log = logging.getLogger(__name__)

FORWARD_IDLE_S = 0.5
"""Forwarder poll interval when the outbox is empty or the broker is away, seconds."""
FORWARD_ERROR_MAX_S = 30.0
"""Longest back-off of the forwarder after an event-store error, seconds."""
REFUSED_RETRY_MIN_S = 1.0
"""First wait before the forwarder sends an event the broker refused (PUBACK reason code, e.g. the
ACL) again, seconds; doubled after each refusal up to :data:`FORWARD_ERROR_MAX_S`."""
FAILURE_REMINDER_S = 600.0
"""While a broker failure lasts (refused login, TLS verification, refused events, unreachable), it is
logged when it starts and then at most this often, seconds: paho retries a connection every
1-30 s, and a line per retry would bury the journal."""
MQTT_BAD_LOGIN_CODES = (0x86, 0x87)
"""CONNACK reason codes of a refused login: Bad User Name or Password, Not Authorized (mosquitto 2
answers a wrong password with the latter)."""
MQTT_UNSUPPORTED_PROTOCOL = 0x84
"""CONNACK reason code Unsupported Protocol Version (paho also maps an MQTT 3.1.1-only broker's
"unacceptable protocol version" answer to it)."""


class _FailureLog:
    """Log a lasting failure when it starts, then at most every :data:`FAILURE_REMINDER_S`.

    Each failure has a key (``"login"``, ``"tls"``, ...); :meth:`clear` ends its episode, so the
    next occurrence is logged at once again. Repeats in between go to the debug log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._repeats: dict[str, int] = {}

    def report(self, key: str, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < FAILURE_REMINDER_S:
                self._repeats[key] = self._repeats.get(key, 0) + 1
                level = logging.DEBUG
            else:
                self._last[key] = now
                repeats = self._repeats.pop(key, 0)
                if last is not None:
                    message += f" (still failing: {repeats} more time(s) since the last report)"
        log.log(level, message, *args)

    def clear(self, *keys: str) -> bool:
        """End these failures' episodes; ``True`` if one of them was going on."""
        with self._lock:
            ended = [k for k in keys if self._last.pop(k, None) is not None]
            for k in keys:
                self._repeats.pop(k, None)
        return bool(ended)


class _EventRefused(Exception):
    """The broker acknowledged an event with a failing reason code: it was not delivered."""


class MqttForwarder:
    """Publish outbox events to MQTT with QoS 1 from a background thread.

    Events are sent one at a time in order; one leaves the outbox only when its PUBACK arrives with
    a success reason code. A timeout or a lost connection sends it again with the same id
    (at-least-once delivery). The client speaks MQTT 5 so that a PUBACK can say "not authorized":
    with MQTT 3.1.1 a broker acknowledges a publication its ACL denies exactly like a delivered one
    (and drops it), which would lose the event. A refused event stays in the outbox and is sent again
    after :data:`REFUSED_RETRY_MIN_S`, doubling up to :data:`FORWARD_ERROR_MAX_S` (and at once on
    reconnection).

    Broker failures (refused login, TLS verification, refused events, broker unreachable) are logged
    with the setting to check when they start, then at most every :data:`FAILURE_REMINDER_S`. The
    password is handed to paho only, never logged.

    Beside the events it keeps the device's current state retained (``state``, ``anomaly``,
    ``score`` topics, see :mod:`edge_asd.events.discovery`), updated from the events it is given and
    the periods passed to :meth:`on_period`, and publishes Home Assistant discovery configs when
    ``config.discovery`` is set; both again on every (re)connection.

    Parameters
    ----------
    config
        An :class:`edge_asd.config.MqttConfig`.
    device_id
        Names the topics ``<prefix>/<device_id>/events`` and ``.../status``.
    store
        The :class:`SQLiteStore` holding the outbox.
    on_command
        Called with the payload (bytes) of every message on ``<prefix>/<device_id>/command``, from
        paho's thread; the topic is subscribed (QoS 1) only when this is given and
        ``config.remote_commands`` is set, on every connection the broker accepted.
    """

    def __init__(self, config: Any, *, device_id: str, store: SQLiteStore,
                 on_command: Callable[..., None] | None = None, max_packet_bytes: int = 8192) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise ConfigError("mqtt.enabled = true but paho-mqtt is not installed; pip install 'edge-asd[device]'") from exc
        self._mqtt = mqtt
        self.max_packet_bytes = int(max_packet_bytes)
        """MQTT 5 Maximum Packet Size asked of the broker when commands are taken, bytes."""
        self.config = config
        self.store = store
        self.topics = DeviceTopics(topic_prefix=config.topic_prefix, device_id=device_id)
        self.topic = self.topics.events
        self.status_topic = self.topics.status
        self.device_id = device_id
        self._live_lock = threading.Lock()  # the live state, and the order its values are published in
        self._live = self._initial_live_state()
        self.published = 0
        self._store_failure: str | None = None  # a store failure not yet published (broker away)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._retry = threading.Event()  # ends a refused event's back-off early: reconnection, close
        self._failures = _FailureLog()
        self._connected = False
        self._connack_refused = False
        self._refused: dict[int, Any] = {}  # message id -> failing PUBACK reason code, not yet looked at
        self._late_mids: set[int] = set()  # events whose PUBACK did not come in time
        self._refused_lock = threading.Lock()
        # MQTT 5: a PUBACK carries a reason code (see the class docstring). The session is clean on
        # every connection (clean_start=True in connect_async), as clean_session=True was with 3.1.1.
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"edge-asd-{device_id}",
            protocol=mqtt.MQTTv5,
        )
        if config.username is not None:
            password = config.password
            if config.password_file is not None:
                try:
                    password = Path(config.password_file).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"mqtt.password_file: cannot read {config.password_file} ({exc})") from exc
            client.username_pw_set(config.username, password)
        if config.tls:
            try:
                client.tls_set(
                    ca_certs=str(config.tls_ca_file) if config.tls_ca_file else None,
                    certfile=str(config.tls_cert_file) if config.tls_cert_file else None,
                    keyfile=str(config.tls_key_file) if config.tls_key_file else None,
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(f"mqtt.tls_*: cannot load the TLS files ({exc})") from exc
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._on_command = on_command if config.remote_commands else None
        if self._on_command is not None:
            client.message_callback_add(self.topics.command, self._command_message)
            client.on_subscribe = self._on_subscribe
        self._client = client
        self._thread = threading.Thread(target=self._forward, name="mqtt-forwarder", daemon=True)

    @property
    def _broker(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._connack_refused = True
            self._report_refused_connection(reason_code)
            return
        recovered = self._failures.clear("login", "tls", "unreachable", "connection")
        self._connected = True
        if recovered:
            log.info("MQTT connected to %s after the failure above; events waiting in the outbox go out now", self._broker)
        else:
            log.info("MQTT connected to %s", self._broker)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        if self._on_command is not None:
            # The session is clean on every connection: subscribe again each time.
            client.subscribe(self.topics.command, qos=1)
        self._publish_conventions()
        if self._store_failure is not None:
            self.publish_store_failure(self._store_failure)
        self._wake.set()
        self._retry.set()

    def _command_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            self._on_command(bytes(message.payload), retained=bool(message.retain))
        except Exception:  # paho would swallow it: keep the traceback in the journal, keep the thread
            log.exception("remote command handler failed")

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            self._failures.report("subscribe", logging.ERROR, "MQTT broker %s refused the subscription to %s (%s): remote "
                                  "commands cannot arrive; let this user read that topic in the broker's ACL",
                                  self._broker, self.topics.command, refused[0])
        else:
            log.info("MQTT: listening for remote commands on %s", self.topics.command)

    def _report_refused_connection(self, reason_code: Any) -> None:
        """A CONNACK with a failing reason code: say which setting to check (paho tries again, 1-30 s apart)."""
        cfg = self.config
        if reason_code.value in MQTT_BAD_LOGIN_CODES and cfg.username is not None:
            where = "mqtt.password_file" if cfg.password_file is not None else "mqtt.password"
            self._failures.report("login", logging.ERROR, "MQTT broker %s refused the login for user %r: bad username or "
                                  "password; check mqtt.username / %s (events are kept in the outbox)",
                                  self._broker, cfg.username, where)
        elif reason_code.value in MQTT_BAD_LOGIN_CODES:
            self._failures.report("login", logging.ERROR, "MQTT broker %s refused an anonymous connection (%s): set "
                                  "mqtt.username and mqtt.password_file (events are kept in the outbox)",
                                  self._broker, reason_code)
        elif reason_code.value == MQTT_UNSUPPORTED_PROTOCOL:
            self._failures.report("connection", logging.ERROR, "MQTT broker %s does not speak MQTT 5, which edge-asd "
                                  "needs to learn whether each event was accepted (mosquitto >= 1.6, EMQX, HiveMQ "
                                  "and VerneMQ do); events are kept in the outbox", self._broker)
        else:
            self._failures.report("connection", logging.ERROR, "MQTT broker %s refused the connection (%s); events "
                                  "are kept in the outbox", self._broker, reason_code)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        """No connection (paho tries again, 1-30 s apart). Called inside paho's ``except OSError``
        block, so the exception is ``sys.exc_info()``'s."""
        exc = sys.exc_info()[1]
        cfg = self.config
        if isinstance(exc, ssl.SSLCertVerificationError):
            trust = (f"mqtt.tls_ca_file = {cfg.tls_ca_file} must be the CA that signed the broker's certificate"
                     if cfg.tls_ca_file is not None else
                     "mqtt.tls_ca_file is not set, and the system's CAs do not vouch for it: set it to the CA that "
                     "signed the broker's certificate")
            self._failures.report("tls", logging.ERROR, "MQTT broker %s: TLS certificate verification failed (%s): %s, "
                                  "and mqtt.host must be a name or address the certificate is for (events are kept "
                                  "in the outbox)", self._broker, getattr(exc, "verify_message", None) or exc, trust)
        elif isinstance(exc, ssl.SSLError):
            self._failures.report("tls", logging.ERROR, "MQTT broker %s: TLS handshake failed (%s): check that "
                                  "mqtt.port is the broker's TLS port and mqtt.tls_cert_file / mqtt.tls_key_file "
                                  "(events are kept in the outbox)", self._broker, exc)
        elif cfg.tls and isinstance(exc, ConnectionResetError):
            self._failures.report("tls", logging.ERROR, "MQTT broker %s reset the connection during the TLS handshake "
                                  "(%s): check that mqtt.port is its TLS port (events are kept in the outbox)",
                                  self._broker, exc)
        else:
            self._failures.report("unreachable", logging.WARNING, "MQTT broker %s unreachable (%s); retrying, events are "
                                  "kept in the outbox", self._broker, exc)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_connected, self._connected = self._connected, False
        refused, self._connack_refused = self._connack_refused, False
        if self._stop.is_set() or refused:
            return  # a refused CONNACK was reported in _on_connect
        if was_connected:
            log.warning("MQTT disconnected (%s); events are kept in the outbox until it is back", reason_code)
        elif self.config.tls:
            # TCP and TLS got through, but the broker hung up without a CONNACK: with TLS 1.3 a
            # missing client certificate shows only now.
            self._failures.report("tls", logging.ERROR, "MQTT broker %s closed the connection before answering (%s): "
                                  "if it demands a client certificate, set mqtt.tls_cert_file / mqtt.tls_key_file; "
                                  "check that mqtt.port is its TLS port (the broker's log says why; events are kept in "
                                  "the outbox)", self._broker, reason_code)
        else:
            self._failures.report("connection", logging.ERROR, "MQTT broker %s closed the connection before answering "
                                  "(%s): if mqtt.port is a TLS port set mqtt.tls = true and mqtt.tls_ca_file (events "
                                  "are kept in the outbox)", self._broker, reason_code)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        """Keep failing PUBACK reason codes for the thread that sent the message (paho calls this
        before the message counts as published, so the code is there when the sender looks)."""
        with self._refused_lock:
            if reason_code.is_failure:
                self._refused[mid] = reason_code
            else:
                self._refused.pop(mid, None)  # message ids are reused
                self._late_mids.discard(mid)

    def _take_refusal(self, mid: int) -> Any:
        with self._refused_lock:
            return self._refused.pop(mid, None)

    def _report_other_refusals(self) -> None:
        """Failing PUBACKs no sender waited for: the status, state and discovery messages."""
        with self._refused_lock:
            codes = [code for mid, code in self._refused.items() if mid not in self._late_mids]
            self._late_mids.difference_update(self._refused)  # a late event stays in the outbox anyway
            self._refused.clear()
        if codes:
            self._failures.report("conventions", logging.WARNING, "MQTT broker %s refused %d status/state/discovery "
                                  "message(s) (%s): its ACL must let %s publish to %s/# and %s/#", self._broker,
                                  len(codes), codes[-1], self.config.username or "this client", self.topics.base,
                                  self.config.discovery_prefix)

    def start(self) -> None:
        # connect_async + loop_start: the first connection is made by paho's thread, so a broker that
        # is away at start-up does not stop the service; paho reconnects with back-off.
        properties = None
        if self._on_command is not None:
            # MQTT 5 Maximum Packet Size: the broker drops anything larger rather than sending it, so
            # an oversized command never reaches the device's memory.
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.MaximumPacketSize = self.max_packet_bytes
        self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s,
                                   clean_start=True, properties=properties)
        self._client.loop_start()
        self._thread.start()

    def emit(self, event: Event) -> None:
        """The event is already in the outbox (the store is emitted to first): wake up the
        forwarder, and show what the event changed on the retained state topics."""
        self._wake.set()
        self._update_live(lambda live: apply_event(live, kind=event.kind, event_id=event.id, time_utc=event.time_utc,
                                                   details=event.details))

    def on_period(self, result: Any, threshold: float) -> None:
        """A closed period (an :class:`edge_asd.decision.alarm.PeriodResult`): retain its score, with the
        threshold and the period's context as attributes."""
        self._update_live(lambda live: apply_period(live, score=result.score, threshold=threshold, start_s=result.start_s,
                                                    end_s=result.end_s, decided=result.decided,
                                                    anomalous=result.anomalous, reason=result.reason,
                                                    evidence=result.evidence_fraction,
                                                    evidence_attributes=evidence_attributes(result)))

    def _initial_live_state(self) -> Any:
        """``starting``, with the anomaly on if the store holds an alarm the service will resume."""
        try:
            open_alarm = self.store.open_alarm(self.device_id)
        except StoreError as exc:
            log.warning("MQTT: cannot tell whether an alarm is open (%s); the anomaly topic starts OFF", exc)
            open_alarm = None
        if open_alarm is None:
            return LiveState()
        return LiveState(anomaly=True, onset_id=open_alarm["onset_id"], anomaly_since_utc=open_alarm["time_utc"])

    def _update_live(self, change: Any) -> None:
        """Apply ``change`` to the live state and publish the state messages whose payload changed.

        Under the lock from the change to the publication, as in :meth:`_publish_conventions`: the
        broker then always sees the newer value of a topic last. Sent only while connected (QoS 0
        is not queued by paho); after an outage the whole state goes out on reconnection."""
        with self._live_lock:
            before = {m.topic: m.payload for m in state_messages(self.topics, self._live)}
            self._live = change(self._live)
            if not self._client.is_connected():
                return
            try:
                for message in state_messages(self.topics, self._live):
                    if before.get(message.topic) != message.payload:
                        self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            except (RuntimeError, ValueError, OSError) as exc:
                # Called from the service's event path: a connection dropping mid-publish must not
                # stop detection, and the next connection publishes the whole state again.
                log.warning("MQTT: state update not published (%s); it goes out on reconnection", exc)

    def _publish_conventions(self) -> None:
        """On connection: the discovery configs (if enabled), then the whole current state.

        Called from paho's thread in ``on_connect``; the configs come first so that Home Assistant
        has subscribed to the state topics by the time their values arrive (they are retained
        anyway)."""
        messages = []
        if self.config.discovery:
            messages += discovery_messages(topics=self.topics, discovery_prefix=self.config.discovery_prefix,
                                           sw_version=__version__)
        with self._live_lock:
            messages += state_messages(self.topics, self._live)
            for message in messages:
                self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)

    def publish_store_failure(self, message: str) -> None:
        """Publish a ``store_error`` event straight to the events topic (QoS 1, not waited for):
        the outbox lives in the store that is failing. While the broker is away the latest failure
        waits and is published on connection."""
        if not self._client.is_connected():
            self._store_failure = message
            return
        self._store_failure = None
        event = Event.create(device=self.device_id, kind="store_error", stream_time_s=0.0, score=None,
                             threshold=0.0, details={"message": message})
        self._client.publish(self.topic, event.to_json(), qos=1)

    def _publish_one(self) -> bool:
        """Send the oldest outbox event; ``True`` if it was acknowledged.

        Raises :class:`_EventRefused` when the PUBACK's reason code says the broker did not take it."""
        rows = self.store.next_outbox(1)
        if not rows or not self._client.is_connected():
            return False
        seq, event_id, payload = rows[0]
        info = self._client.publish(self.topic, payload, qos=1)
        if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
            return False
        deadline = time.monotonic() + self.config.publish_timeout_s
        while not info.is_published() and time.monotonic() < deadline and self._client.is_connected():
            info.wait_for_publish(timeout=0.2)
        if not info.is_published():
            with self._refused_lock:
                self._late_mids.add(info.mid)
            log.warning("MQTT: no acknowledgement for event %s; it stays in the outbox and will be resent", event_id)
            return False
        refusal = self._take_refusal(info.mid)
        if refusal is not None:
            self._failures.report("event_refused", logging.ERROR, "MQTT broker %s refused event %s on %s (%s): its ACL "
                                  "must let %s publish to that topic; the event stays in the outbox, with the ones "
                                  "after it, and is sent again (back-off up to %.0f s)", self._broker, event_id,
                                  self.topic, refusal, self.config.username or "this client", FORWARD_ERROR_MAX_S)
            raise _EventRefused(event_id)
        self.store.mark_delivered(seq)
        self.published += 1
        if self._failures.clear("event_refused"):
            log.info("MQTT broker %s accepts events on %s again; the outbox goes out", self._broker, self.topic)
        return True

    def _forward(self) -> None:
        backoff = FORWARD_IDLE_S
        refused_wait = REFUSED_RETRY_MIN_S
        while not self._stop.is_set():
            self._report_other_refusals()
            self._retry.clear()  # before sending: a reconnection during the send cuts the back-off short
            try:
                sent = self._publish_one()
            except _EventRefused:
                # Not woken by new events (they would be refused too): by reconnection or close.
                self._retry.wait(refused_wait)
                refused_wait = min(2 * refused_wait, FORWARD_ERROR_MAX_S)
                continue
            except (RuntimeError, ValueError, OSError) as exc:
                # paho raises these when the connection drops mid-publish; the event stays queued.
                log.warning("MQTT publish failed (%s); retrying", exc)
                sent = False
            except sqlite3.Error as exc:
                # A locked database or an I/O error in the outbox query: the events are still in
                # the file (or in the store's memory). Wait, longer each time, and try again; the
                # thread must outlive it or nothing is forwarded until the next restart.
                log.warning("MQTT forwarder: the event store failed (%s); retrying in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(2 * backoff, FORWARD_ERROR_MAX_S)
                continue
            backoff = FORWARD_IDLE_S
            if sent:
                refused_wait = REFUSED_RETRY_MIN_S
            else:
                self._wake.wait(FORWARD_IDLE_S)
                self._wake.clear()

    def close(self) -> None:
        """Try to deliver the outbox for ``flush_timeout_s``, then disconnect; the rest is sent next start."""
        self._stop.set()
        self._wake.set()
        self._retry.set()
        if self._thread.is_alive():
            self._thread.join()
        deadline = time.monotonic() + self.config.flush_timeout_s
        while self.store.count_outbox() and time.monotonic() < deadline:
            try:
                if not self._publish_one():
                    time.sleep(0.1)
            except _EventRefused:
                break  # the broker's ACL will not change in the seconds left: the next start sends them
            except (RuntimeError, ValueError, OSError):
                time.sleep(0.1)
        left = self.store.count_outbox()
        if left:
            log.warning("MQTT: %d event(s) not yet delivered; kept in %s for the next start", left, self.store.path)
        if self._client.is_connected():
            info = self._client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError):
                pass  # best effort: the broker's last will says "offline" anyway
        self._client.disconnect()
        self._client.loop_stop()
