"""The evidence rule on the device: the real service with a real bundle and store. Evidence is
forgotten at a sensor loss and at a restart after a gap longer than ``alarm.evidence_max_gap_s``,
kept across a quick restart; the onset says which rule fired; status, metrics, MQTT and
``edge-asd info`` show it; calibrate fits it or says how much audio it needs."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from edge_asd.decision.alarm import AlarmConfig, PeriodResult
from edge_asd.scoring.bundle import Threshold, read_bundle, update_threshold
from edge_asd.decision.evidence import EvidenceRule
from tests.device_helpers import SR, copy_bundle, edge_asd, machine_clips

PERIOD_S = 1.0
LEVEL = 1000.0
"""High enough that no test stream reaches it: the tests follow the statistic, not onsets."""


def evidence_bundle(tmp: Path, *, level: float = LEVEL) -> Path:
    """The session bundle with a threshold no period reaches and an evidence rule whose reference
    sits far below normal sound, so that every period adds evidence (about 10 sd)."""
    bundle = copy_bundle(tmp, threshold=None)
    rule = EvidenceRule(reference_mean=-10.0, reference_std=1.0, decision_level=level, false_alarms_per_week=1.0,
                        period_s=PERIOD_S)
    update_threshold(bundle, Threshold(value=1e3, method="test", source="device", evidence=rule))
    return bundle


class ToneSource:
    """Normal machine sound in 0.1 s blocks; ``lost_after`` blocks in, the device is lost for a
    moment (as the microphone source reports it), then audio goes on."""

    sr, n_channels, realtime, overflows, block_size = SR, 1, False, 0, 1600

    def __init__(self, seconds: float, *, lost_after: int | None = None) -> None:
        from tests.bundle_factory import _machine_tone

        self.audio = _machine_tone(np.random.default_rng(0), seconds, SR, anomaly=False).astype(np.float32)
        self.lost_after = lost_after
        self.on_status = None

    def blocks(self):
        for i in range(self.audio.size // self.block_size):
            if i == self.lost_after and self.on_status is not None:
                self.on_status("sensor_lost", {"reason": "test"})
                self.on_status("sensor_back", {"outage_s": 0.5})
            yield self.audio[i * self.block_size:(i + 1) * self.block_size, None]

    def stop(self):
        pass

    def close(self):
        pass


class Periods:
    """A sink that keeps every closed period (and the events)."""

    def __init__(self):
        self.periods: list[PeriodResult] = []
        self.events = []

    def on_period(self, result, threshold):
        self.periods.append(result)

    def emit(self, event):
        self.events.append(event)

    def close(self):
        pass

    def write_line(self, line):
        pass


def run_service(bundle: Path, db: Path, source: ToneSource, **alarm) -> Periods:
    from edge_asd.config import Config
    from edge_asd.scoring.detector import Detector
    from edge_asd.service import Notifier, Service
    from edge_asd.events import SQLiteStore

    config = dataclasses.replace(Config(), alarm=AlarmConfig(period_s=PERIOD_S, onset_k=2, onset_n=3, recovery_m=2,
                                                             refractory_s=0.0, **alarm))
    store = SQLiteStore(db)
    seen = Periods()
    service = Service(config, detector=Detector.from_bundle(bundle), source=source, sinks=[store, seen], stdout=seen,
                      notifier=Notifier({}), store=store)
    try:
        assert service.run() == 0
    finally:
        store.close()
    return seen


def decided(seen: Periods) -> list[float]:
    return [p.evidence for p in seen.periods if p.decided]


def test_evidence_grows_is_kept_across_a_quick_restart_and_forgotten_after_a_gap(tmp_path):
    from edge_asd.events import SQLiteStore

    bundle = evidence_bundle(tmp_path)
    db = tmp_path / "events.sqlite"
    first = decided(run_service(bundle, db, ToneSource(6.0)))
    assert len(first) >= 4 and all(b > a for a, b in zip(first, first[1:]))
    saved = SQLiteStore(db).saved_evidence("edge-asd")
    assert saved is not None and saved["statistic"] == pytest.approx(first[-1])

    # Restarted at once: the evidence goes on from where it was.
    resumed = decided(run_service(bundle, db, ToneSource(3.0)))
    assert resumed[0] > first[-1]
    # Restarted after a gap longer than alarm.evidence_max_gap_s: it starts afresh.
    time.sleep(0.2)
    fresh = decided(run_service(bundle, db, ToneSource(3.0), evidence_max_gap_s=0.1))
    assert fresh[0] < first[0] * 1.5 and fresh[0] < resumed[0] / 2
    # Another rule (a recalibration) never continues the old rule's evidence.
    other = evidence_bundle(tmp_path / "other", level=LEVEL / 2)
    assert decided(run_service(other, db, ToneSource(3.0)))[0] < resumed[0] / 2


def test_a_sensor_loss_forgets_the_evidence(tmp_path):
    bundle = evidence_bundle(tmp_path)
    seen = run_service(bundle, tmp_path / "events.sqlite", ToneSource(8.0, lost_after=40))
    kinds = [e.kind for e in seen.events]
    assert kinds[:2] == ["sensor_lost", "sensor_back"], kinds
    evidence = decided(seen)
    drops = [i for i, (a, b) in enumerate(zip(evidence, evidence[1:])) if b < a]
    # Growing before the loss and after it, and once back to the size of one period's evidence.
    assert len(drops) == 1, evidence
    after = evidence[drops[0] + 1]
    assert after < evidence[drops[0]] / 2 and after == pytest.approx(evidence[0], rel=0.5)


def test_an_evidence_onset_says_which_rule_fired_and_carries_the_evidence(tmp_path):
    bundle = evidence_bundle(tmp_path, level=9.0)  # about 10 sd a period, counted as z_cap = 3: 2.5 a period, the 4th crosses
    seen = run_service(bundle, tmp_path / "events.sqlite", ToneSource(8.0))
    onset = next(e for e in seen.events if e.kind == "onset")
    d = onset.details
    assert d["rules"] == ["evidence"] and d["evidence"] >= 9.0 and d["evidence_level"] == 9.0
    assert d["evidence_fraction"] == 1.0 and d["evidence_false_alarms_per_week"] == 1.0
    assert d["shift_start_s"] == pytest.approx(seen.periods[0].start_s, abs=0.05) and d["shift_sd"] > 5
    assert d["shift_start_utc"] <= onset.time_utc
    # Sound 10 sd above the reference never drains the evidence: the alarm holds, no back-to-normal.
    assert [e.kind for e in seen.events] == ["onset"]


def test_status_metrics_and_mqtt_state_show_the_evidence(tmp_path):
    from edge_asd.events.health import BundleInfo, HealthWriter, _SnapshotCollector, format_status, read_status
    from edge_asd.events.discovery import DeviceTopics, LiveState, apply_period, evidence_attributes, state_messages

    info = BundleInfo(path="/b", model="int8", sr=16000, threshold=2.5, threshold_set_by="enrolled",
                      threshold_method="gamma-tail-fit", threshold_set_utc="2026-01-01T00:00:00+00:00")
    writer = HealthWriter(tmp_path / "state.json", write_interval_s=1.0, device_id="d", bundle=info)
    period = PeriodResult(start_s=0.0, end_s=9.9, score=0.4, n_windows=10, anomalous=False, alarm=False,
                          evidence=3.3, evidence_level=8.0)
    writer.on_period(period, 2.5)
    status = read_status(tmp_path / "state.json")
    assert status.snapshot.evidence == pytest.approx(0.4125)
    assert "evidence      41 % of the alarm level" in format_status(status)
    samples = {s.name: s.value for family in _SnapshotCollector(writer).collect() for s in family.samples}
    assert samples["edge_asd_evidence_ratio"] == pytest.approx(0.4125)
    # Without a rule: said so, and no metric.
    writer.on_period(dataclasses.replace(period, evidence=None, evidence_level=None), 2.5)
    assert "no evidence rule" in format_status(read_status(tmp_path / "state.json"))
    assert "edge_asd_evidence_ratio" not in {s.name for f in _SnapshotCollector(writer).collect() for s in f.samples}
    writer.close()

    topics = DeviceTopics(topic_prefix="edge-asd", device_id="d")
    live = apply_period(LiveState(), score=0.4, threshold=2.5, start_s=0.0, end_s=9.9, decided=True, anomalous=False,
                        evidence=period.evidence_fraction, evidence_attributes=evidence_attributes(period))
    messages = {m.topic: m for m in state_messages(topics, live)}
    assert messages["edge-asd/d/evidence"].payload == "41.2" and messages["edge-asd/d/evidence"].retain
    assert json.loads(messages["edge-asd/d/evidence/attributes"].payload) == {"statistic": 3.3, "alarm_level": 8.0, "end_s": 9.9}


def test_calibrate_fits_both_rules_and_info_shows_the_expected_delay(tmp_path):
    bundle = copy_bundle(tmp_path)
    wavs = machine_clips(tmp_path / "site", ["normal"] * 40, duration_s=2.0, seed=3)
    short = edge_asd("calibrate", bundle, "--input", wavs[0].parent, "--period-s", "2", "--seconds", "50", "--dry-run")
    assert short.returncode == 0, short.stderr
    assert "evidence rule: not fitted: 25 period(s) (50 s) of normal audio are too few" in short.stdout
    assert ">= 60 s at 2 s periods" in short.stdout

    both = edge_asd("calibrate", bundle, "--input", wavs[0].parent, "--period-s", "2", "--false-alarms-per-week", "2")
    assert both.returncode == 0, both.stderr
    assert "false-alarm target 2/week for the device: 50% for the threshold, 50% for the evidence rule" in both.stdout
    t = read_bundle(bundle).threshold
    assert t.evidence is not None and t.evidence.false_alarms_per_week == pytest.approx(1.0)
    assert t.false_alarms_per_day == pytest.approx(1 / 7) and t.evidence.period_s == 2.0
    info = edge_asd("info", bundle, "--no-model")
    assert info.returncode == 0, info.stderr
    assert f"alarm level h {t.evidence.decision_level:.3g} (k 0.5) for 1 false alarm(s)/week at 2 s periods" in info.stdout
    assert f"expected time to detect a shift of 1 sd: {t.evidence.delay_s(1.0):.0f} s" in info.stdout
    assert "device target 2 false alarm(s)/week" in info.stdout

    both_rates = edge_asd("calibrate", bundle, "--input", wavs[0].parent, "--false-alarms-per-week", "1",
                          "--false-alarms-per-day", "1")
    assert both_rates.returncode != 0 and "not both" in both_rates.stderr and "Traceback" not in both_rates.stderr
