"""Microphone capture with pyaudio: the only module that imports it, and only when used.

pyaudio (PortAudio) segfaults when a stream is opened on a device index that does not exist, so
every index is checked against ``get_device_count()`` first. A device that disappears (USB
unplugged, HAT driver reset) is reopened with exponential back-off; lost blocks (input overruns)
are counted in ``overflows``. Whoever sets :attr:`MicrophoneSource.on_status` hears of the loss
(``"sensor_lost"``) and of the first block after it (``"sensor_back"``, with the outage's length),
so the service can raise events and keep its stream clock on wall time across the outage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from edge_asd.errors import AudioDeviceError, ParameterError

__all__ = ["InputDevice", "list_input_devices", "MicrophoneSource"]

log = logging.getLogger(__name__)

INT16_FULL_SCALE = 32768.0
RECONNECT_FIRST_S = 0.5
"""First back-off after a device error, seconds; doubled up to ``reconnect_max_s``."""
PA_INPUT_OVERFLOWED = -9981
"""PortAudio's ``paInputOverflowed`` error code (the device overran our reads)."""
SENSOR_LOST = "sensor_lost"
SENSOR_BACK = "sensor_back"


@dataclass(frozen=True, kw_only=True)
class InputDevice:
    """A capture device as PortAudio reports it."""

    index: int
    name: str
    max_input_channels: int
    default_sample_rate_hz: float


def _import_pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as exc:
        raise AudioDeviceError(
            "pyaudio is not installed; pip install 'edge-asd[device]' (needs portaudio19-dev to build)"
        ) from exc
    return pyaudio


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2 while PortAudio probes ALSA: it prints dozens of lines about absent cards and
    plugins that are noise in the journal (real failures still raise)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _open_pyaudio() -> Any:
    pyaudio = _import_pyaudio()
    with _quiet_stderr():
        return pyaudio.PyAudio()


def _devices(pa: Any) -> list[InputDevice]:
    out = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if int(info.get("maxInputChannels", 0)) > 0:
            out.append(
                InputDevice(
                    index=index,
                    name=str(info.get("name", "")),
                    max_input_channels=int(info["maxInputChannels"]),
                    default_sample_rate_hz=float(info.get("defaultSampleRate", 0.0)),
                )
            )
    return out


def list_input_devices() -> list[InputDevice]:
    """Capture devices PortAudio can see (empty when there are none)."""
    pa = _open_pyaudio()
    try:
        return _devices(pa)
    finally:
        pa.terminate()


def resolve_device(pa: Any, device: int | str | None, channels: int) -> int | None:
    """Check ``device`` against what PortAudio reports and return a valid index (``None``: default).

    Raises
    ------
    AudioDeviceError
        No capture devices, index out of range, not an input device, no name match, or fewer input
        channels than configured.
    """
    count = pa.get_device_count()
    inputs = _devices(pa)
    if count == 0 or not inputs:
        raise AudioDeviceError(
            "no audio input devices found (no sound card, or this user is not in the 'audio' group); "
            "check 'arecord -l' and 'edge-asd devices'"
        )
    if device is None:
        try:
            index = int(pa.get_default_input_device_info()["index"])
        except OSError as exc:
            raise AudioDeviceError(f"no default input device ({exc}); set input.device") from exc
    elif isinstance(device, int):
        if not 0 <= device < count:
            raise AudioDeviceError(
                f"audio device index {device} is out of range: PortAudio reports {count} device(s) "
                f"(0..{count - 1}); see 'edge-asd devices'"
            )
        index = device
    else:
        matches = [d for d in inputs if device.lower() in d.name.lower()]
        if not matches:
            names = ", ".join(f"{d.index}: {d.name}" for d in inputs)
            raise AudioDeviceError(f"no input device named like {device!r}; available: {names}")
        index = matches[0].index
    found = next((d for d in inputs if d.index == index), None)
    if found is None:
        raise AudioDeviceError(f"audio device {index} has no input channels; see 'edge-asd devices'")
    if found.max_input_channels < channels:
        raise AudioDeviceError(
            f"audio device {index} ({found.name}) has {found.max_input_channels} input channel(s), "
            f"{channels} are configured (input.channels)"
        )
    return index


class MicrophoneSource:
    """Blocks of int16 audio from a PortAudio capture device, as float32 ``(n, channels)``.

    Parameters
    ----------
    device
        Index, a substring of the device name, or ``None`` for the default input.
    channels
        Channels to capture.
    sr
        Sample rate, Hz.
    block_size
        Frames per read.
    reconnect_max_s
        Longest back-off between reopen attempts, seconds.

    The device is validated here (so a bad index fails at start-up, not in the capture thread);
    the stream opens on the first iteration of :meth:`blocks`.
    """

    realtime = True

    def __init__(
        self,
        *,
        device: int | str | None,
        channels: int,
        sr: int,
        block_size: int,
        reconnect_max_s: float = 30.0,
    ) -> None:
        if channels < 1 or sr < 1 or block_size < 1:
            raise ParameterError(f"channels, sr and block_size must be >= 1, got {channels}, {sr}, {block_size}")
        self.device = device
        self.n_channels = channels
        self.sr = sr
        self.block_size = block_size
        self.reconnect_max_s = reconnect_max_s
        self.overflows = 0
        self.reconnects = 0
        self.on_status: Callable[[str, dict[str, Any]], None] | None = None
        """Called from the capture thread with ``("sensor_lost", details)`` when the device fails
        (or cannot be opened) and ``("sensor_back", details)`` when it delivers again; ``details``
        name the device and the error, and for ``sensor_back`` the outage in seconds."""
        self._stop = threading.Event()
        self._pyaudio = _import_pyaudio()
        pa = _open_pyaudio()
        try:
            self.index = resolve_device(pa, device, channels)
        finally:
            pa.terminate()

    def _open(self) -> tuple[Any, Any]:
        pa = _open_pyaudio()
        try:
            # Re-resolve: after a replug the same device may have another index.
            self.index = resolve_device(pa, self.device, self.n_channels)
            stream = pa.open(
                format=self._pyaudio.paInt16,
                channels=self.n_channels,
                rate=self.sr,
                input=True,
                input_device_index=self.index,
                frames_per_buffer=self.block_size,
            )
        except (OSError, ValueError, AudioDeviceError):
            pa.terminate()
            raise
        return pa, stream

    def _status(self, kind: str, **details: Any) -> None:
        if self.on_status is not None:
            self.on_status(kind, {"device": str(self.device if self.device is not None else "default"), **details})

    def blocks(self) -> Iterator[np.ndarray]:
        backoff = RECONNECT_FIRST_S
        lost_at: float | None = None  # monotonic time the device was lost, while it is
        attempts = 0
        while not self._stop.is_set():
            try:
                pa, stream = self._open()
            except (OSError, ValueError, AudioDeviceError) as exc:
                if lost_at is None:
                    # Gone between start-up (where it was checked) and this open.
                    lost_at = time.monotonic()
                    self._status(SENSOR_LOST, error=str(exc))
                attempts += 1
                log.error("cannot open audio device %r: %s; retrying in %.1f s", self.device, exc, backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.reconnect_max_s)
                self.reconnects += 1
                continue
            log.info("capturing from device %d: %d ch at %d Hz", self.index, self.n_channels, self.sr)
            # The device is back (and the back-off reset) only once it delivers audio: one that opens
            # and then fails its first read would otherwise be reopened at once, for ever, with a
            # sensor_lost / sensor_back pair each time (thousands a minute in the store).
            delivered = False
            try:
                while not self._stop.is_set():
                    try:
                        raw = stream.read(self.block_size, exception_on_overflow=True)
                    except OSError as exc:
                        if exc.errno == PA_INPUT_OVERFLOWED:
                            # The device overran: this block is gone; count it, keep going.
                            self.overflows += 1
                            continue
                        raise
                    if not delivered:
                        delivered = True
                        backoff = RECONNECT_FIRST_S
                        if lost_at is not None:
                            outage_s = time.monotonic() - lost_at
                            log.warning("audio device %r is back after %.1f s (%d reopen attempt(s))", self.device,
                                        outage_s, attempts)
                            self._status(SENSOR_BACK, index=self.index, outage_s=round(outage_s, 3), attempts=attempts)
                            lost_at, attempts = None, 0
                    data = np.frombuffer(raw, dtype=np.int16).reshape(-1, self.n_channels)
                    yield data.astype(np.float32) * np.float32(1.0 / INT16_FULL_SCALE)
            except OSError as exc:
                self.reconnects += 1
                if lost_at is None:
                    log.error("audio device %d (%r) stopped delivering audio (%s); reconnecting", self.index, self.device, exc)
                    lost_at = time.monotonic()
                    self._status(SENSOR_LOST, index=self.index, error=str(exc))
                if not delivered:
                    attempts += 1
                    log.error("audio device %r opened but delivered no audio (%s); retrying in %.1f s", self.device, exc,
                              backoff)
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, self.reconnect_max_s)
            finally:
                with contextlib.suppress(OSError):
                    stream.stop_stream()
                    stream.close()
                pa.terminate()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
