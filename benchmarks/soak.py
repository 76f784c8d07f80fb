"""Soak: hours of audio through ``edge-asd run`` (wav files, as fast as possible), with sensor-fault
stretches (silence, clipping) and idle-like quiet stretches mixed into the machine's sound.

Measured from outside the process (``/proc/PID``) every 0.5 s: resident memory, threads, open file
descriptors. Reported: RSS after warm-up (10 % of the audio) and at the end, their difference, the
thread and fd counts at both points, periods expected from the audio length against periods
reported, events by kind, dropped blocks. Written as a markdown table to ``results/soak.md``.

    python -m benchmarks.soak [--hours 1] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SR = 16000
FILE_S = 60.0
"""Audio per wav file, seconds."""
PERIOD_S = 10.0


def make_audio(folder: Path, hours: float, *, seed: int = 0) -> float:
    """Write ``hours`` of mono 16 kHz audio as one-minute wav files; return the audio length, s.

    Every fifth minute holds a 20 s stretch of one of: silence (a dead microphone), clipping (gain
    far too high), a quiet machine (idle-like, 30 dB down).
    """
    from edge_asd.audio import write_wav
    from tests.bundle_factory import _machine_tone

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_files = max(1, round(hours * 3600 / FILE_S))
    kinds = ["silence", "clipping", "quiet"]
    for i in range(n_files):
        x = _machine_tone(rng, FILE_S, SR, anomaly=False).astype(np.float32)
        if i % 5 == 4:
            a, b = int(20 * SR), int(40 * SR)
            kind = kinds[(i // 5) % 3]
            if kind == "silence":
                x[a:b] = 0.0
            elif kind == "clipping":
                x[a:b] = np.clip(x[a:b] * 40.0, -1.0, 1.0)
            else:
                x[a:b] *= 10 ** (-30 / 20)
        write_wav(folder / f"{i:05d}.wav", x[:, None], SR)
    return n_files * FILE_S


def proc_stats(pid: int) -> tuple[float, int, int] | None:
    """``(RSS MB, threads, open fds)`` of a live process, or ``None`` once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        threads = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration, ValueError):
        return None
    return rss_kb / 1024, threads, fds


def soak(work: Path, *, hours: float, bundle: Path | None = None) -> dict:
    """Run the soak in ``work``; return the figures (see the module docstring)."""
    if bundle is None:
        from tests.bundle_factory import session_wavs_and_bundle

        bundle = session_wavs_and_bundle()[1]
    audio_s = make_audio(work / "audio", hours)
    cfg = work / "soak.toml"
    cfg.write_text(f"""
[device]
id = "soak"
bundle = "{bundle}"

[input]
kind = "folder"
path = "{work / 'audio'}"
channels = 1
realtime = false

[alarm]
period_s = {PERIOD_S}

[store]
path = "{work / 'soak.sqlite'}"

[service]
log_periods = true
stats_interval_s = 3600.0
""")
    (work / "soak.sqlite").unlink(missing_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("NOTIFY_SOCKET", None)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    lines: list[dict] = []
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()

    def read_out() -> None:
        for line in proc.stdout:
            if line.startswith("{"):
                lines.append(json.loads(line))

    reader = threading.Thread(target=read_out, daemon=True)
    reader.start()
    samples: list[tuple[float, float, int, int]] = []  # (audio s reached, RSS MB, threads, fds)
    while proc.poll() is None:
        stats = proc_stats(proc.pid)
        periods = [x for x in lines[-50:] if x.get("type") == "period"]
        reached = periods[-1]["end_s"] if periods else 0.0
        if stats is not None:
            samples.append((reached, *stats))
        time.sleep(0.5)
    reader.join(timeout=30)
    wall_s = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"edge-asd run exited {proc.returncode}:\n{''.join(err)[-3000:]}")
    periods = [x for x in lines if x.get("type") == "period"]
    events = collections.Counter(x["kind"] for x in lines if x.get("type") == "event")
    warm = [s for s in samples if s[0] >= 0.1 * audio_s] or samples
    first_t = periods[0]["start_s"] if periods else 0.0
    expected = math.ceil((audio_s - first_t) / PERIOD_S - 1e-9)
    stats_line = next((ln for ln in reversed(err) if "real-time factor" in ln), "")
    dropped = stats_line.split("dropped ")[1].split(" blocks")[0] if "dropped " in stats_line else "?"
    return {
        "audio_h": audio_s / 3600, "wall_s": wall_s,
        "rss_warm_mb": warm[0][1], "rss_end_mb": samples[-1][1], "rss_max_after_warm_mb": max(s[1] for s in warm),
        "threads_warm": warm[0][2], "threads_end": samples[-1][2], "fds_warm": warm[0][3], "fds_end": samples[-1][3],
        "periods_expected": expected, "periods_reported": len(periods), "events": dict(events), "dropped_blocks": dropped,
    }


def markdown(r: dict) -> str:
    growth = r["rss_end_mb"] - r["rss_warm_mb"]
    events = ", ".join(f"{k} {v}" for k, v in sorted(r["events"].items())) or "none"
    return "\n".join([
        "# Soak: `python -m benchmarks.soak`",
        "",
        f"{r['audio_h']:.2f} h of audio (one-minute wav files; every fifth minute 20 s of silence, clipping or a "
        f"30 dB quieter machine) through `edge-asd run`, as fast as possible, in {r['wall_s']:.0f} s.",
        "",
        "| audio h | RSS after warm-up MB | RSS end MB | growth MB | max RSS after warm-up MB | threads warm / end | fds warm / end | periods expected / reported | events | dropped blocks |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['audio_h']:.2f} | {r['rss_warm_mb']:.1f} | {r['rss_end_mb']:.1f} | {growth:+.1f} | {r['rss_max_after_warm_mb']:.1f} | "
        f"{r['threads_warm']} / {r['threads_end']} | {r['fds_warm']} / {r['fds_end']} | "
        f"{r['periods_expected']} / {r['periods_reported']} | {events} | {r['dropped_blocks']} |",
        "",
        "Warm-up: the first 10 % of the audio. Goals: growth <= 5 MB, no growth in threads or fds, every period reported.",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="Audio to run, hours (default 1).")
    parser.add_argument("--bundle", type=Path, help="Model bundle (default: the test suite's tiny conv-ae, trained once).")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "soak")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.md")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    result = soak(args.work, hours=args.hours, bundle=args.bundle)
    text = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
