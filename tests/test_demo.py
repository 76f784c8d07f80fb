"""The README's main job: ``asd-train demo --quick`` end to end as a subprocess (synthetic data →
conv-ae → float + int8 bundle → evaluation → streaming through the device service)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-m", "trainer", "demo", "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    print(run.stdout)  # shown by pytest when an assertion below fails
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| **int8 − float** |" in run.stdout and "streaming 48 new clips" in run.stdout
    # Calibrated on site first: both alarm rules, for the default of one false alarm a week.
    assert "false-alarm target 1/week for the device: 50% for the threshold, 50% for the evidence rule" in run.stdout
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    evaluation = bundle["metrics"]["evaluation"]
    # The quick demo's test set is 10 normal x 10 anomalous clips: one of its 100 pairs ranked the other
    # way round by int8 is exactly 0.01 of AUC, which float rounding can put a hair above 0.01.
    assert abs(evaluation["auc_int8_minus_float"]) <= 0.01 + 1e-9
    assert (out / "bundle" / "model_int8.tflite").stat().st_size <= 256 * 1024
    # the events the service printed are the ones it stored
    printed = [line.split()[1] for line in run.stdout.splitlines() if line.strip().startswith("event ")]
    with sqlite3.connect(out / "events.sqlite") as db:
        stored = [kind for (kind,) in db.execute("SELECT kind FROM events ORDER BY seq")]
    assert printed == stored
    # The stream is normal, anomalous, then normal clips (named NNN_<label>.wav, played in name
    # order): the alarm must rise during the anomalous stretch and fall back after it.
    from edge_asd.audio import read_wav

    clips = sorted((out / "stream").glob("*.wav"))
    labels = [c.stem.split("_", 1)[1] for c in clips]
    durations = [read_wav(c)[0].shape[0] / read_wav(c)[1] for c in clips]
    first = labels.index("anomaly")
    last = len(labels) - 1 - labels[::-1].index("anomaly")
    assert "normal" in labels[:first] and "normal" in labels[last:]
    anomaly_start, anomaly_end = sum(durations[:first]), sum(durations[: last + 1])
    times = [float(line.split()[3]) for line in run.stdout.splitlines() if line.strip().startswith("event ")]
    assert stored and stored[0] == "onset" and stored[-1] == "back_to_normal", (stored, run.stdout[-3000:])
    assert stored == ["onset", "back_to_normal"] * (len(stored) // 2)  # alternating, never two onsets
    assert anomaly_start <= times[0] <= anomaly_end, (times, anomaly_start, anomaly_end)
    # Heard while the fault is still on: before the evidence rule, the onset came at the end of the last
    # faulty clip (120 s, the figure), i.e. at anomaly_end.
    assert times[0] < anomaly_end, (times, anomaly_end)
    assert times[-1] > anomaly_end, (times, anomaly_end)
