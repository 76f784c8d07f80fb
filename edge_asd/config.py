"""Device configuration: one TOML file per device, validated once into frozen dataclasses.

Every error names the offending key (``input.channels: expected an integer, got "eight"``). Paths
in the file are relative to the file's directory. CLI flags override values with
:func:`dataclasses.replace` after loading, never by editing the file.

Sections: ``[device]``, ``[input]``, ``[alarm]`` (see :class:`edge_asd.decision.alarm.AlarmConfig`),
``[signal]`` (:class:`edge_asd.decision.signal_quality.SignalQualityConfig`), ``[machine]``
(:class:`edge_asd.decision.machine_state.MachineStateConfig`), ``[store]``, ``[mqtt]``, ``[service]`` and ``[health]``. See ``firmware_config/*.toml`` for complete examples.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from edge_asd.decision.alarm import AlarmConfig
from edge_asd.events.health import HealthConfig
from edge_asd.errors import ConfigError, ParameterError
from edge_asd.decision.machine_state import MachineStateConfig
from edge_asd.decision.signal_quality import SignalQualityConfig

__all__ = [
    "DeviceConfig",
    "InputConfig",
    "StoreConfig",
    "MqttConfig",
    "RuntimeConfig",
    "HealthConfig",
    "Config",
    "load_config",
    "parse_config",
    "parse_input_spec",
]

INPUT_KINDS = ("microphone", "wav", "folder")

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """Who this device is and which model it runs."""

    id: str = "edge-asd"
    """Device id: names the MQTT topic and every event. Letters, digits, ``-`` and ``_``."""
    bundle: Path = Path("/var/lib/edge-asd/bundle")
    """Model bundle directory (writable: on-site calibration stores its threshold there)."""
    model: Literal["int8", "float"] = "int8"
    """Which model of the bundle to run."""
    class_label: str | None = None
    """Machine class for ``neg_log_prob`` bundles (one of the bundle's classes)."""
    num_threads: int = 1
    """Interpreter threads."""

    def __post_init__(self) -> None:
        if not self.id or not all(c.isalnum() or c in "-_" for c in self.id):
            raise ParameterError(f"device.id must be letters, digits, '-' or '_', got {self.id!r}")
        if self.model not in ("int8", "float"):
            raise ParameterError(f"device.model must be 'int8' or 'float', got {self.model!r}")
        if self.num_threads < 1:
            raise ParameterError(f"device.num_threads must be >= 1, got {self.num_threads}")


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    """Where audio comes from."""

    kind: Literal["microphone", "wav", "folder"] = "microphone"
    """``microphone`` (pyaudio), ``wav`` (one file) or ``folder`` (all wav files below it, in order)."""
    path: Path | None = None
    """File or folder for ``wav`` / ``folder``."""
    device: int | str | None = None
    """Capture device: index, or a substring of its name; ``None`` is the system default."""
    channels: int = 1
    """Channels captured (the front end averages them to mono)."""
    sample_rate_hz: int = 16000
    """Capture rate, Hz; resampled to the bundle's rate when different (files too)."""
    block_s: float = 0.1
    """Audio per block handed from capture to processing, seconds."""
    queue_s: float = 10.0
    """Audio the capture→processing queue holds before blocks are dropped (and counted), seconds."""
    realtime: bool = True
    """Files only: play at real speed (``true``) or as fast as possible (``false``)."""
    loop: bool = False
    """Files only: start again at the end (demo mode)."""
    reconnect_max_s: float = 30.0
    """Microphone: longest back-off between reconnect attempts, seconds."""
    max_pace: float = 1.5
    """Live input: more seconds of audio per second of wall time than this (over 5 s) is a sensor
    fault (``faster_than_realtime``); 0 turns the check off (a test device paced by its feeder)."""

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ParameterError(f"input.kind must be one of {INPUT_KINDS}, got {self.kind!r}")
        if self.kind != "microphone" and self.path is None:
            raise ParameterError(f"input.path is required for input.kind = {self.kind!r}")
        for key in ("channels", "sample_rate_hz"):
            if getattr(self, key) < 1:
                raise ParameterError(f"input.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("block_s", "queue_s", "reconnect_max_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ParameterError(f"input.{key} must be > 0 seconds, got {value!r}")
        if self.queue_s < self.block_s:
            raise ParameterError(f"input.queue_s ({self.queue_s}) must hold at least one block ({self.block_s} s)")
        if not (math.isfinite(self.max_pace) and (self.max_pace == 0 or self.max_pace > 1)):
            raise ParameterError(f"input.max_pace must be 0 (off) or above 1 (seconds of audio per second), got {self.max_pace!r}")

    @property
    def block_size(self) -> int:
        """Samples per block."""
        return max(1, round(self.block_s * self.sample_rate_hz))

    @property
    def queue_blocks(self) -> int:
        """Blocks the queue holds."""
        return max(1, math.ceil(self.queue_s / self.block_s))


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """The local SQLite event store (durable, and the outbox for MQTT)."""

    path: Path = Path("/var/lib/edge-asd/events.sqlite")
    """Database file (WAL mode)."""
    max_events: int = 100_000
    """Delivered events kept; older ones are deleted. Undelivered events are never deleted."""
    memory_events: int = 10_000
    """Events held in memory while the store cannot be written (full or read-only disk); beyond it
    the oldest are dropped (they are in the journal, from stdout)."""

    def __post_init__(self) -> None:
        if self.max_events < 1:
            raise ParameterError(f"store.max_events must be >= 1, got {self.max_events}")
        if self.memory_events < 1:
            raise ParameterError(f"store.memory_events must be >= 1, got {self.memory_events}")


@dataclass(frozen=True, kw_only=True)
class MqttConfig:
    """Optional MQTT forwarding (QoS 1, store-and-forward from the SQLite outbox)."""

    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    topic_prefix: str = "edge-asd"
    """Events go to ``<topic_prefix>/<device id>/events``; status (retained) to ``.../status``."""
    client_id: str | None = None
    """MQTT client id (default ``edge-asd-<device id>``)."""
    username: str | None = None
    """Login name on the broker (with ``password`` or ``password_file``)."""
    password: str | None = None
    """The password itself; a config file holding one must be readable by its owner only
    (a warning at load otherwise). Prefer ``password_file``."""
    password_file: Path | None = None
    """Read the password from this file instead (keeps secrets out of the config; ``chmod 600``)."""
    tls: bool = False
    """Connect with TLS (the broker's TLS port, usually 8883), verifying the broker's certificate."""
    tls_ca_file: Path | None = None
    """PEM file of the CA that signed the broker's certificate (unset: the system's CAs)."""
    tls_cert_file: Path | None = None
    """PEM client certificate, for brokers that demand one."""
    tls_key_file: Path | None = None
    """PEM private key of the client certificate (unset: it is in ``tls_cert_file``)."""
    keepalive_s: int = 30
    """MQTT keep-alive, seconds."""
    publish_timeout_s: float = 10.0
    """Wait for a PUBACK this long before retrying the same event (same id), seconds."""
    flush_timeout_s: float = 5.0
    """At shutdown, try this long to deliver the outbox; the rest goes at the next start, seconds."""
    discovery: bool = True
    """Publish Home Assistant MQTT discovery configs (retained) on every connection; see
    :mod:`edge_asd.events.discovery`. The retained state topics are published either way."""
    discovery_prefix: str = "homeassistant"
    """Discovery topic prefix (Home Assistant's ``discovery_prefix``)."""
    remote_commands: bool = False
    """Accept operator commands on ``<topic_prefix>/<device id>/command`` (see
    :mod:`edge_asd.remote`): only commands signed with the operator's key (``command_key_file``),
    and only over TLS with a password or a client certificate."""
    command_key_file: Path | None = None
    """The operator's Ed25519 public key (PEM), owned by root: every remote command must be signed
    with its private key (``edge-asd keygen``, ``edge-asd sign``). Required with ``remote_commands``."""
    incoming_dir: Path | None = None
    """The only folder a remote ``reload`` installs bundles from (signed ones, newer than the
    running version); neither inside nor above the running bundle. Unset: reload only re-reads the
    running bundle."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ParameterError(f"mqtt.port must be 1..65535, got {self.port}")
        if not self.topic_prefix or any(c in self.topic_prefix for c in "#+"):
            raise ParameterError(f"mqtt.topic_prefix must be non-empty without '#' or '+', got {self.topic_prefix!r}")
        if self.password is not None and self.password_file is not None:
            raise ParameterError("mqtt.password and mqtt.password_file are exclusive; give one")
        if self.username is None and (self.password is not None or self.password_file is not None):
            raise ParameterError("mqtt.password / mqtt.password_file given without mqtt.username; set mqtt.username")
        tls_files = [key for key in ("tls_ca_file", "tls_cert_file", "tls_key_file") if getattr(self, key) is not None]
        if tls_files and not self.tls:
            # Without tls = true they would be ignored and the login sent in clear text.
            raise ParameterError(f"mqtt.{tls_files[0]} is set but mqtt.tls = false; set mqtt.tls = true")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ParameterError("mqtt.tls_key_file is set without mqtt.tls_cert_file; give the client certificate too")
        if self.remote_commands:
            # Commands change what the detector listens for: never in clear text, never from an
            # unauthenticated session, never unsigned.
            if not self.tls:
                raise ParameterError("mqtt.remote_commands = true needs mqtt.tls = true: commands and the login must not "
                                     "travel in clear text")
            logged_in = self.username is not None and (self.password is not None or self.password_file is not None)
            if not logged_in and self.tls_cert_file is None:
                raise ParameterError("mqtt.remote_commands = true needs an authenticated broker connection: set mqtt.username "
                                     "with mqtt.password_file, or a TLS client certificate (mqtt.tls_cert_file), and a "
                                     "broker ACL that lets only operators publish to the command topic")
            if self.command_key_file is None:
                raise ParameterError("mqtt.remote_commands = true needs mqtt.command_key_file: the operator's public key "
                                     "(edge-asd keygen makes a pair; install the .pub file, owned by root, in /etc/edge-asd)")
        # Empty levels ("a//b", a leading or trailing '/') would put the configs where Home
        # Assistant never looks; wildcards cannot be published to.
        if not self.discovery_prefix or any(c in self.discovery_prefix for c in "#+") or "" in self.discovery_prefix.split("/"):
            raise ParameterError("mqtt.discovery_prefix must be non-empty topic levels without '#', '+' or empty "
                                 f"levels, got {self.discovery_prefix!r}")
        for key in ("keepalive_s", "publish_timeout_s", "flush_timeout_s"):
            if getattr(self, key) <= 0:
                raise ParameterError(f"mqtt.{key} must be > 0, got {getattr(self, key)}")


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """The service loop itself."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stats_interval_s: float = 60.0
    """Log throughput, drops and real-time factor this often, seconds."""
    log_periods: bool = False
    """Also write every period score to stdout as a JSON line (``"type": "period"``)."""

    def __post_init__(self) -> None:
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ParameterError(f"service.log_level must be debug/info/warning/error, got {self.log_level!r}")
        if self.stats_interval_s <= 0:
            raise ParameterError(f"service.stats_interval_s must be > 0, got {self.stats_interval_s}")


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole device configuration."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    input: InputConfig = field(default_factory=InputConfig)
    alarm: AlarmConfig = field(default_factory=AlarmConfig)
    signal: SignalQualityConfig = field(default_factory=SignalQualityConfig)
    machine: MachineStateConfig = field(default_factory=MachineStateConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    service: RuntimeConfig = field(default_factory=RuntimeConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    source_path: Path | None = None
    """The TOML file this came from (``None``: defaults)."""


_SECTIONS: dict[str, type] = {
    "device": DeviceConfig,
    "input": InputConfig,
    "alarm": AlarmConfig,
    "signal": SignalQualityConfig,
    "machine": MachineStateConfig,
    "store": StoreConfig,
    "mqtt": MqttConfig,
    "service": RuntimeConfig,
    "health": HealthConfig,
}


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _convert(key: str, value: Any, hint: Any, base: Path) -> Any:
    """Check one TOML value against a field's type hint; return it converted (paths resolved)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(key, value, option, base)
            except ConfigError as exc:
                errors.append(str(exc))
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
        raise ConfigError(f"{key}: expected {names}, got {_describe(value)}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {list(allowed)}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path string, got {_describe(value)}")
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (base / path)
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # a bug in this module


def _build_section(name: str, cls: type, table: Any, base: Path) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}]: must be a table, got {_describe(table)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    kwargs = {key: _convert(f"{name}.{key}", value, hints[key], base) for key, value in table.items()}
    try:
        return cls(**kwargs)
    except ParameterError as exc:
        raise ConfigError(str(exc)) from exc


def parse_config(data: Mapping[str, Any], *, base: Path, source_path: Path | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config` (relative paths against ``base``)."""
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"[{unknown[0]}]: unknown section (known: {', '.join(_SECTIONS)})")
    sections = {name: _build_section(name, cls, data.get(name, {}), base) for name, cls in _SECTIONS.items()}
    return Config(**sections, source_path=source_path)


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a device TOML file.

    Raises
    ------
    ConfigError
        Missing or unreadable file, TOML syntax error (with line and column), unknown section or
        key, wrong type or out-of-range value. The message names the file and the key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    try:
        config = parse_config(data, base=path.resolve().parent, source_path=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    _warn_readable_secrets(path, config.mqtt)
    return config


def _warn_readable_secrets(path: Path, mqtt: MqttConfig) -> None:
    """Warn when the broker password can be read by others than the file's owner: a config file
    holding ``mqtt.password`` readable by group or others, a ``mqtt.password_file`` readable by
    others (group read is the usual way to share it with the service's group)."""
    checks = []
    if mqtt.password is not None:
        checks.append((path, stat.S_IRGRP | stat.S_IROTH, ", which holds mqtt.password,",
                       f"chmod 600 {path}, or move the password to a file named by mqtt.password_file"))
    if mqtt.password_file is not None:
        checks.append((mqtt.password_file, stat.S_IROTH, " (mqtt.password_file)", f"chmod 600 {mqtt.password_file}"))
    for file, readable, what, fix in checks:
        try:
            mode = file.stat().st_mode
        except OSError:
            continue  # a missing password file is reported when MQTT connects
        bits = mode & readable
        if bits:
            who = {stat.S_IRGRP: "its group", stat.S_IROTH: "others"}.get(bits, "group and others")
            log.warning("%s%s is readable by %s (mode %03o): %s", file, what, who, stat.S_IMODE(mode), fix)


def parse_input_spec(spec: str, base: InputConfig) -> InputConfig:
    """Override the input from a CLI string: a wav file, a folder, or ``mic``, ``mic:N``, ``mic:NAME``.

    A bare integer is a microphone index too. Other input settings (channels, rate, ...) are kept.
    """
    kind: str
    device: int | str | None = base.device
    path: Path | None = None
    if spec == "mic" or spec.startswith("mic:") or spec.lstrip("-").isdigit():
        kind = "microphone"
        value = spec[4:] if spec.startswith("mic:") else ("" if spec == "mic" else spec)
        if value:
            device = int(value) if value.lstrip("-").isdigit() else value
    else:
        path = Path(spec)
        if path.is_dir():
            kind = "folder"
        elif path.is_file():
            kind = "wav"
        else:
            raise ConfigError(f"--input {spec}: no such file or folder (use mic, mic:N or mic:NAME for a microphone)")
    try:
        return dataclasses.replace(base, kind=kind, path=path, device=device)
    except ParameterError as exc:
        raise ConfigError(str(exc)) from exc
