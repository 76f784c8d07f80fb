"""Helpers for the device tests: one real bundle per session, wav folders, the CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_asd.audio import write_wav

REPO = Path(__file__).resolve().parents[1]
SR = 16000
SEPARATING_THRESHOLD = 9.0
"""Between the tiny conv-ae's normal (about 0, at most 3 for the default clips) and anomalous (about
20 and more) clip scores, in standardised units (schema 2 score scaling; 3.0 before it, in raw MSE)."""


def session_bundle() -> Path:
    """The real conv-ae bundle trained once per test process (see ``tests.bundle_factory``)."""
    from tests.bundle_factory import session_wavs_and_bundle

    return session_wavs_and_bundle()[1]


def copy_bundle(dst: Path, *, threshold: float | None = SEPARATING_THRESHOLD) -> Path:
    """A private, writable copy of the session bundle (with a known threshold)."""
    from edge_asd.scoring.bundle import Threshold, update_threshold

    out = dst / "bundle"
    shutil.copytree(session_bundle(), out)
    if threshold is not None:
        update_threshold(out, Threshold(value=threshold, method="test", source="test"))
    return out


def machine_clips(folder: Path, labels: list[str], *, duration_s: float = 2.0, seed: int = 1, channels: int = 1) -> list[Path]:
    """Write one clip per label (``"normal"``/``"anomaly"``) as ``folder/NNN_<label>.wav``, in order."""
    from tests.bundle_factory import _machine_tone

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, label in enumerate(labels):
        x = _machine_tone(rng, duration_s, SR, anomaly=label == "anomaly")
        path = folder / f"{i:03d}_{label}.wav"
        write_wav(path, np.repeat(x[:, None], channels, axis=1), SR)
        out.append(path)
    return out


def device_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def edge_asd(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m edge_asd ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "edge_asd", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env or device_env(), cwd=REPO,
    )


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def service_toml(tmp: Path, *, bundle: Path, inputs: Path, db: Path, extra: str = "", period_s: float = 1.0) -> Path:
    """A device config for a fast file replay with short periods."""
    return write_toml(tmp / "device.toml", f"""
[device]
id = "test-dev"
bundle = "{bundle}"

[input]
kind = "folder"
path = "{inputs}"
channels = 1
realtime = false

[alarm]
period_s = {period_s}
onset_k = 2
onset_n = 3
recovery_m = 2
refractory_s = 0.0

[store]
path = "{db}"

[service]
log_periods = true
{extra}
""")


def edge_asd_with_source(source_code: str, *args: str, **popen: object) -> subprocess.Popen:
    """Start ``edge-asd ARGS`` as a subprocess whose audio source is ``FakeSource()``, a class
    defined by ``source_code``.

    For what a real device cannot be made to do here (a capture ``OSError``, a ``read`` that
    never returns): everything else, the CLI, the service, the sinks and the exit code, is the real
    process. ``popen`` overrides the ``subprocess.Popen`` keywords (default: text pipes).
    """
    script = (
        "import sys\n"
        "import edge_asd.audio.sources as _sources\n"
        f"{source_code}\n"
        "_sources.open_source = lambda config, **kw: FakeSource()\n"
        "from edge_asd.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    kwargs: dict = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=device_env(), cwd=REPO)
    kwargs.update(popen)
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], **kwargs)
