"""A real ALSA capture device for the tests: an ALSA ``file`` PCM whose capture side reads raw
s16le audio from a FIFO the test writes to, declared in a test-local ALSA configuration.

PortAudio (through pyaudio, in the real ``edge-asd`` process) lists it and reads from it like a
sound card. Why a FIFO and not a regular file as ``infile``: the ``file`` plugin's slave (``null``)
has no clock, so a regular file is delivered thousands of times faster than real time and, at its
end, the plugin hands out its stale buffer forever. Reading from a FIFO blocks until the test writes,
so the test sets the pace (a few times real time) and the device delivers exactly the audio written,
then waits like a quiet sound card.

The declaration (``pcm.NAME`` in a file that first includes the system ``alsa.conf``, used through
``ALSA_CONFIG_PATH``)::

    pcm.NAME {
        type plug                      # converts whatever the client asks for ...
        slave {
            pcm { type file; slave.pcm { type null }; file "/dev/null"; infile "FIFO"; format "raw" }
            format S16_LE; channels N; rate 16000   # ... to what the raw stream holds
        }
        hint { show on; description "..." }
    }

The ``plug`` with a fixed slave format makes the FIFO's bytes mean N channels of 16 kHz s16le
whatever the client opens, and makes PortAudio report 16000 Hz as the default rate. Everything
here is in libasound2 itself (no libasound2-plugins, no alsa-utils): it comes with PortAudio.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import threading
import time
import wave
from pathlib import Path

import numpy as np

SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
BLOCK_S = 0.1
"""Audio per write, seconds: the capture block of the test profiles. Why it matters: the ``file``
plugin reads one period (the block PortAudio asks for) from the FIFO with one ``read()``, and when
that read returns less (a short read) it still hands out the whole period, the rest of it stale
buffer contents. A pipe read never splits a write made while the reader waits (the writer holds the
pipe's lock for the whole write), so writing exactly one block at a time makes every read whole."""


def wav_frames(path: Path) -> bytes:
    """The interleaved s16le frames of a 16-bit PCM wav file, exactly as stored (the raw stream)."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2, f"{path}: not 16-bit"
        return w.readframes(w.getnframes())


class AlsaFifoDevice:
    """The device ``name`` with ``channels`` channels at ``rate`` Hz, fed by :meth:`feed`.

    ``env`` is the environment for processes that should see it (``ALSA_CONFIG_PATH`` set).
    """

    def __init__(self, folder: Path, *, name: str = "edgeasd_test", channels: int = 2, rate: int = 16000) -> None:
        self.folder = folder
        self.name = name
        self.channels = channels
        self.rate = rate
        self.fifo = folder / f"{name}.fifo"
        self.config = folder / "asound.conf"
        os.mkfifo(self.fifo)
        # Held open read-write by the test for the device's lifetime: opening the FIFO for reading
        # (PortAudio probes every PCM) then never blocks for want of a writer, a reader that closes
        # never makes our writes fail, and the reader never sees end-of-file.
        self._fd = os.open(self.fifo, os.O_RDWR)
        self.declare()
        self.env = {"ALSA_CONFIG_PATH": str(self.config)}

    def declare(self) -> None:
        """Write the configuration that declares the device (again, after :meth:`vanish`)."""
        self._write(
            f"<{SYSTEM_ALSA_CONF}>\n"
            f"pcm.{self.name} {{\n"
            f"    type plug\n"
            f"    slave {{\n"
            f"        pcm {{ type file; slave.pcm {{ type null }}; file \"/dev/null\"; infile \"{self.fifo}\"; format \"raw\" }}\n"
            f"        format S16_LE\n        channels {self.channels}\n        rate {self.rate}\n"
            f"    }}\n"
            f"    hint {{ show on; description \"edge-asd test capture ({self.channels} ch from a FIFO)\" }}\n"
            f"}}\n"
        )

    def vanish(self) -> None:
        """Take the device out of the configuration: the next PortAudio start no longer lists it
        (as after a USB array is unplugged)."""
        self._write(f"<{SYSTEM_ALSA_CONF}>\n")

    def _write(self, text: str) -> None:
        # A new file renamed over the old: a new inode, which alsa-lib notices even within the same
        # second (it compares device, inode and mtime in seconds before re-reading a configuration).
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.config)

    def buffered(self) -> int:
        """Bytes written and not yet read by the device's client."""
        out = fcntl.ioctl(self._fd, termios.FIONREAD, struct.pack("i", 0))
        return struct.unpack("i", out)[0]

    def feed(self, frames: bytes, *, speed: float = 4.0) -> None:
        """Write ``frames`` (interleaved s16le, whole blocks of :data:`BLOCK_S`) at ``speed`` times real
        time (blocks while the pipe is full)."""
        per_s = self.rate * self.channels * 2
        chunk_bytes = round(BLOCK_S * self.rate) * self.channels * 2
        assert len(frames) % chunk_bytes == 0, f"feed whole {BLOCK_S} s blocks ({len(frames)} bytes)"
        for start in range(0, len(frames), chunk_bytes):
            chunk = frames[start : start + chunk_bytes]
            os.write(self._fd, chunk)
            time.sleep(len(chunk) / per_s / speed)

    def feed_in_background(self, frames: bytes, *, speed: float = 4.0) -> threading.Thread:
        thread = threading.Thread(target=self.feed, args=(frames,), kwargs={"speed": speed}, daemon=True)
        thread.start()
        return thread

    def discard_rest(self, feeder: threading.Thread, timeout: float = 30.0) -> None:
        """Once the client has stopped reading, read and drop what ``feeder`` still writes until it
        ends (it would otherwise block on the full pipe)."""
        fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        deadline = time.monotonic() + timeout
        try:
            while feeder.is_alive():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.fifo}: the feeder still writes after {timeout} s")
                try:
                    os.read(fd, 1 << 16)
                except BlockingIOError:
                    time.sleep(0.01)
            feeder.join()
        finally:
            os.close(fd)

    def wait_drained(self, timeout: float = 60.0) -> None:
        """Wait until the client has read everything written."""
        deadline = time.monotonic() + timeout
        while self.buffered() > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.fifo}: {self.buffered()} bytes still unread after {timeout} s")
            time.sleep(0.02)

    def silence(self, seconds: float) -> bytes:
        return np.zeros((round(seconds * self.rate), self.channels), dtype="<i2").tobytes()

    def close(self) -> None:
        os.close(self._fd)
