"""Signal quality and machine state (issue 17 items 2 and 3): each sensor check, the debounce, what
is learned at enroll, the alarm's hold, the service on a stream with sensor faults and an idle
machine, and the quality column of ``edge-asd score``."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import numpy as np
import pytest

from edge_asd.decision.alarm import AlarmConfig, AlarmLogic, ExcludedStretches
from edge_asd.config import parse_config
from edge_asd.errors import ConfigError
from edge_asd.decision.machine_state import MachineGate, MachineStateConfig, MachineStateMonitor, resolve_gate
from edge_asd.decision.signal_quality import (
    MIN_RMS_DBFS, SignalQualityConfig, SignalQualityMonitor, assess_clip, channel_correlation, check_block,
    learn_signal_config, longest_zero_run,
)
from tests.device_helpers import SEPARATING_THRESHOLD, SR, copy_bundle, edge_asd, machine_clips, service_toml
from tests.sensor_stream import CHANNELS, EXPECTED_EVENTS, FAULT_LABELS, MONITORS, noise, write_stream

BLOCK = 1600  # 0.1 s at 16 kHz


def machine_block(rng, n=BLOCK, ch=4):
    """A hum (the same on every channel, as a close array hears it) plus a little independent noise."""
    t = np.arange(n) / SR
    hum = 0.2 * np.sin(2 * np.pi * 120 * t + rng.uniform(0, 6)) + 0.1 * np.sin(2 * np.pi * 360 * t)
    return (hum[:, None] + 0.01 * rng.standard_normal((n, ch))).astype(np.float32)


# -- each check ---------------------------------------------------------------------------------


def test_every_check_finds_its_problem_and_only_it():
    rng = np.random.default_rng(0)
    cfg = SignalQualityConfig(min_channel_correlation=0.5)
    good = machine_block(rng)
    ok = check_block(good, cfg, sr=SR)
    assert ok.problems == () and ok.reason == "ok" and ok.measures["silence"] > -20
    assert ok.measures["channel_decorrelated"] > 0.95 and ok.measures["dead_channel"] < 1.0

    def problems(block, config=cfg, previous=None):
        return check_block(block, config, sr=SR, previous=previous).problems

    assert problems(np.zeros((BLOCK, 4), np.float32)) == ("silence",)
    assert problems(noise(rng, BLOCK, 4, -80)) == ("silence",)  # a dead microphone's hiss
    assert problems(noise(rng, BLOCK, 4, -60)) != ("silence",)  # a quiet room is not silence
    assert problems(np.full((BLOCK, 4), 0.3, np.float32))[0] == "silence"  # stuck at DC: no signal
    assert problems(np.clip(good * 20, -1, 1)) == ("clipping",)
    assert problems(good + 0.3) == ("dc_offset",)
    gap = good.copy()
    gap[500:700] = 0.0  # 200 samples (12.5 ms) zero-filled by a driver
    assert problems(gap) == ("dropout",) and longest_zero_run(gap) == 200
    short = good.copy()
    short[500:540] = 0.0  # 2.5 ms: shorter than dropout_zero_run_s
    assert problems(short) == ()
    assert problems(good, previous=good.copy()) == ("repeated_block",)
    assert problems(good, config=dataclasses.replace(cfg, check_repeated_blocks=False), previous=good.copy()) == ()
    dead = good.copy()
    dead[:, 2] = 0.0
    check = check_block(dead, cfg, sr=SR)
    assert check.problems == ("dead_channel",) and check.figures["dead_channel"][2] == [2]
    loose = good.copy()
    loose[:, 1] = noise(rng, BLOCK, 1, -14)[:, 0]  # a channel hearing only itself, at the others' level
    check = check_block(loose, cfg, sr=SR)
    assert check.problems == ("channel_decorrelated",) and check.figures["channel_decorrelated"][2] == [1]
    corr = channel_correlation(loose)
    assert corr[1] < 0.2 and np.all(np.delete(corr, 1) > 0.5)
    # Without a learned or configured floor the decorrelation check is off.
    assert problems(loose, config=SignalQualityConfig()) == ()


def test_one_odd_block_is_no_fault_a_sustained_problem_is_and_it_clears():
    rng = np.random.default_rng(1)
    cfg = SignalQualityConfig(fault_window_s=1.0, fault_fraction=0.5, clear_after_s=2.0)
    mon = SignalQualityMonitor(cfg, n_channels=4, sr=SR)
    t = 0.0
    changes = []

    def feed(block):
        nonlocal t
        check, change = mon.update(block, start_s=t)
        t += block.shape[0] / SR
        if change is not None:
            changes.append((round(t, 2), change))
        return check

    for _ in range(20):
        feed(machine_block(rng))
    assert feed(np.zeros((BLOCK, 4), np.float32)).reason == "silence"  # one odd block ...
    for _ in range(20):
        feed(machine_block(rng))
    assert changes == [] and not mon.faulted  # ... raises nothing
    for _ in range(30):  # 3 s of clipping from t = 4.1 s
        feed(np.clip(machine_block(rng) * 20, -1, 1))
    (t_fault, fault), = changes
    assert fault.kind == "sensor_fault" and fault.reason == "clipping" and fault.details["severity"] == "warning"
    assert t_fault == pytest.approx(4.6) and fault.since_s == pytest.approx(4.1)  # half of the 1 s window
    assert fault.value > 0.5 and fault.limit == cfg.max_clipped_fraction and mon.faulted
    for _ in range(15):  # 1.5 s good: not yet clear
        feed(machine_block(rng))
    assert len(changes) == 1
    feed(np.clip(machine_block(rng) * 20, -1, 1))  # clipping again restarts the clearing run
    for _ in range(19):
        feed(machine_block(rng))
    assert len(changes) == 1
    feed(machine_block(rng))
    (t_ok, ok) = changes[-1]
    assert ok.kind == "sensor_ok" and ok.reason == "clipping" and not ok.active and not mon.faulted
    assert t_ok == pytest.approx(t) and ok.since_s == pytest.approx(t - 2.0) and ok.value < ok.limit


def test_assess_clip_names_the_problem_of_a_whole_clip():
    rng = np.random.default_rng(2)
    cfg = SignalQualityConfig()
    clip = np.concatenate([machine_block(rng, n=BLOCK * 20, ch=2)])
    assert assess_clip(clip, SR, cfg) == ("ok", {})
    assert assess_clip(np.zeros((SR * 2, 2), np.float32), SR, cfg)[0] == "silence"
    assert assess_clip(np.clip(clip * 20, -1, 1), SR, cfg)[0] == "clipping"
    half_dead = clip.copy()
    half_dead[:, 0] *= 1e-4  # -80 dB on channel 0
    assert assess_clip(half_dead, SR, cfg)[0] == "dead_channel"
    # Shorter than the fault window: judged as a whole.
    assert assess_clip(np.zeros((BLOCK * 5, 2), np.float32), SR, cfg)[0] == "silence"


# -- learned at enroll --------------------------------------------------------------------------


def site_record(level_dbfs, *, channels=(0.0, 0.0), dc=(0.0, 0.0), p05=None):
    return {"signal": {"channel_ac_dbfs": [level_dbfs + c for c in channels], "dc_offset": list(dc)},
            "quality": {"channel_correlation_p05": p05}}


def test_thresholds_learned_from_the_site_and_toml_values_win():
    cfg = SignalQualityConfig()
    quiet, notes = learn_signal_config(cfg, site_record(-50.0))
    assert quiet.silence_dbfs == pytest.approx(-90.0) and "enrolled site level -50.0 dBFS" in notes[0]
    loud, _ = learn_signal_config(cfg, site_record(-10.0))
    assert loud.silence_dbfs == MIN_RMS_DBFS  # never above -70: a machine switched off is not a dead microphone
    assert learn_signal_config(cfg, None)[0] == cfg and cfg.silence_floor_dbfs == MIN_RMS_DBFS
    # The quiet machine's own sound at -75 dBFS: silence by default, not against its learned floor.
    rng = np.random.default_rng(3)
    quiet_machine = noise(rng, BLOCK, 2, -75)
    assert check_block(quiet_machine, cfg, sr=SR).reason == "silence"
    assert check_block(quiet_machine, quiet, sr=SR).reason == "ok"
    spread, _ = learn_signal_config(cfg, site_record(-20.0, channels=(0.0, -8.0), dc=(0.08, 0.0), p05=0.9))
    assert spread.channel_gap_db == pytest.approx(28.0) and spread.max_dc_offset == pytest.approx(0.16)
    assert spread.min_channel_correlation == pytest.approx(0.6)
    assert learn_signal_config(cfg, site_record(-20.0, p05=0.3))[0].min_channel_correlation is None  # too little agreement
    fixed = dataclasses.replace(cfg, silence_dbfs=-60.0, min_channel_correlation=0.1)
    kept, _ = learn_signal_config(fixed, site_record(-50.0, p05=0.9))
    assert kept.silence_dbfs == -60.0 and kept.min_channel_correlation == 0.1


def test_signal_and_machine_sections_are_validated_naming_the_key(tmp_path):
    from pathlib import Path

    config = parse_config({"signal": {"silence_dbfs": -80, "clear_after_s": 3}, "machine": {"stop_is_alarm": True}},
                          base=Path("."))
    assert config.signal.silence_dbfs == -80.0 and config.signal.clear_after_s == 3.0 and config.machine.stop_is_alarm
    for data, key in (({"signal": {"silence_dbfs": 3}}, "signal.silence_dbfs"),
                      ({"signal": {"fault_fraction": 0}}, "signal.fault_fraction"),
                      ({"signal": {"silense_dbfs": -80}}, "signal.silense_dbfs"),
                      ({"machine": {"idle_after_s": -1}}, "machine.idle_after_s"),
                      ({"machine": {"stop_is_alarm": "yes"}}, "machine.stop_is_alarm")):
        with pytest.raises(ConfigError, match=key):
            parse_config(data, base=Path("."))


# -- machine state ------------------------------------------------------------------------------


def frames_at(level_db, n=6, n_features=32):
    return np.full((n, n_features), level_db, np.float32)


def test_machine_state_gate_hysteresis_and_stop_is_alarm():
    gate = MachineGate(idle_below_db=-35.0, running_above_db=-29.0, source="test")
    for stop_is_alarm, severity in ((False, "info"), (True, "alarm")):
        mon = MachineStateMonitor(MachineStateConfig(idle_after_s=1.0, running_after_s=1.0, stop_is_alarm=stop_is_alarm), gate)
        t, changes = 0.0, []

        def feed(level, n_blocks):
            nonlocal t
            for _ in range(n_blocks):
                below, change = mon.update(frames_at(level), start_s=t, end_s=t + 0.1)
                t += 0.1
                if change is not None:
                    changes.append((round(t, 2), change))
            return below

        assert feed(-15.0, 20) is False and changes == []
        assert feed(-60.0, 5) is True and changes == []  # 0.5 s off: not yet idle
        feed(-15.0, 1)
        feed(-60.0, 10)
        (t_idle, idle), = changes
        assert idle.kind == "machine_idle" and idle.details["severity"] == severity and t_idle == pytest.approx(3.6)
        assert idle.value == pytest.approx(-60.0) and idle.limit == -35.0 and mon.idle
        feed(-32.0, 30)  # above the gate, below gate + hysteresis: still idle
        assert len(changes) == 1 and mon.idle
        feed(-20.0, 10)
        (t_run, running) = changes[-1]
        assert running.kind == "machine_running" and t_run == pytest.approx(t) and not mon.idle


def test_machine_gate_from_the_bundle_factory_or_the_enrolled_site(tiny_bundle):
    from edge_asd.scoring.bundle import read_bundle

    bundle = read_bundle(tiny_bundle)
    cfg = MachineStateConfig()
    gate = resolve_gate(cfg, bundle)
    assert gate.idle_below_db == pytest.approx(np.mean(bundle.normalization.mean) - 20.0)
    assert gate.running_above_db == pytest.approx(gate.idle_below_db + 6.0) and "factory normalisation" in gate.source
    assert resolve_gate(dataclasses.replace(cfg, idle_below_db=-50.0), bundle).idle_below_db == -50.0


# -- the alarm's hold ---------------------------------------------------------------------------


def test_periods_overlapping_a_hold_are_not_decided_and_k_of_n_restarts_after_it():
    alarm = AlarmLogic(AlarmConfig(period_s=1.0, onset_k=2, onset_n=3, recovery_m=1), threshold=1.0)
    results = []

    def period(score, start, *, valid=True):
        for k in range(4):
            r = alarm.update(score, start + 0.25 * k, valid=valid)
            if r is not None:
                results.append(r)

    period(5.0, 0.0)  # anomalous
    period(0.0, 1.0)
    alarm.hold("sensor_fault")
    period(5.0, 2.0)
    period(5.0, 3.0)
    alarm.release("sensor_fault")
    period(5.0, 4.0)
    period(0.0, 5.0)
    period(0.0, 6.0)
    decided = [(r.start_s, r.decided, r.reason) for r in results]
    assert decided[:5] == [(0.0, True, ""), (1.0, False, "sensor_fault"), (2.0, False, "sensor_fault"),
                           (3.0, False, "sensor_fault"), (4.0, True, "")]
    # Without the hold, periods 0, 2 and 3 (or 0 and 4) make 2 of 3 anomalous: an onset. With it,
    # period 4 is the only anomalous period of the restarted look-back.
    assert not any(r.event for r in results) and results[4].anomalous and results[4].anomalous_in_window == 1
    # Invalid windows stay out of the mean; a period of only invalid windows is not decided.
    period(50.0, 7.0, valid=False)
    period(0.0, 8.0)
    assert results[-1].start_s == 7.0 and not results[-1].decided and results[-1].reason == "no valid windows"
    assert results[-1].n_invalid == 4 and np.isnan(results[-1].score)


def test_excluded_stretches_overlap():
    ex = ExcludedStretches(memory_s=2.0)
    ex.add(1.0, 1.1)
    ex.add(1.1, 1.2)  # merges
    assert ex.overlaps(0.9, 1.05) and ex.overlaps(1.15, 1.5) and not ex.overlaps(1.2, 1.5) and not ex.overlaps(0.5, 1.0)
    ex.add(5.0, 5.1)  # 1.0-1.2 falls out of memory
    assert not ex.overlaps(0.0, 2.0) and ex.overlaps(5.05, 6.0)


# -- the service: a stream with sensor faults, an idle machine, then an anomaly -----------------

def run_stream(tmp, bundle, wavs, name, extra):
    (tmp / name).mkdir()
    cfg = service_toml(tmp / name, bundle=bundle, inputs=wavs, db=tmp / name / "events.sqlite", extra=extra)
    cfg.write_text(cfg.read_text().replace("channels = 1", f"channels = {CHANNELS}"))
    result = edge_asd("run", "--config", cfg)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, [r for r in lines if r["type"] == "event"], [r for r in lines if r["type"] == "period"]


def test_service_reports_sensor_faults_and_idle_apart_from_anomalies(tmp_path):
    bundle = copy_bundle(tmp_path)
    stretches = write_stream(tmp_path / "wavs", tmp_path / "clips")
    start, end = {}, {}
    for label, s, e in stretches:  # the first start and the last end of each kind of stretch
        start.setdefault(label, s)
        end[label] = e
    result, events, periods = run_stream(tmp_path, bundle, tmp_path / "wavs", "checked", MONITORS)
    kinds = [(e["kind"], e["details"].get("reason")) for e in events]
    assert kinds == EXPECTED_EVENTS, kinds
    period_s = 1.0
    faults = [e for e in events if e["kind"] in ("sensor_fault", "machine_idle")]
    oks = [e for e in events if e["kind"] in ("sensor_ok", "machine_running")]
    for fault, ok, label in zip(faults, oks, FAULT_LABELS):
        # Each change is reported within two periods of the change in the audio.
        assert start[label] < fault["stream_time_s"] <= start[label] + 2 * period_s, (label, fault)
        assert end[label] < ok["stream_time_s"] <= end[label] + 2 * period_s, (label, ok)
    dead = events[4]
    assert dead["details"]["channels"] == [1] and dead["score"] > dead["threshold"] == 20.0
    idle = events[6]
    assert idle["details"]["severity"] == "alarm" and idle["score"] < idle["threshold"]  # stop_is_alarm = true
    assert events[0]["details"]["severity"] == "warning"
    onset = events[8]
    assert start["anomaly"] < onset["stream_time_s"] <= start["anomaly"] + 3 * period_s
    # No period overlapping a sensor or idle stretch was decided anomalous; those inside were not decided.
    for label in FAULT_LABELS:
        overlapping = [p for p in periods if p["start_s"] < end[label] and p["end_s"] > start[label]]
        assert overlapping and not any(p["decided"] and p["anomalous"] for p in overlapping), (label, overlapping)
        inside = [p for p in overlapping if p["start_s"] >= start[label] + 0.5 and p["end_s"] <= end[label]]
        assert inside and all(not p["decided"] and p["reason"] in ("sensor_fault", "machine_idle") for p in inside)
    rows = sqlite3.connect(tmp_path / "checked" / "events.sqlite").execute("SELECT id, kind FROM events ORDER BY seq").fetchall()
    assert rows == [(e["id"], e["kind"]) for e in events]

    # The same stream without the two stages: the sensor faults and the stopped machine are alarms.
    _, plain, _ = run_stream(tmp_path, bundle, tmp_path / "wavs", "unchecked",
                             "[signal]\nenabled = false\n\n[machine]\nenabled = false\n")
    first_onset = next(e for e in plain if e["kind"] == "onset")
    assert first_onset["stream_time_s"] < start["anomaly"], plain


# -- edge-asd score -----------------------------------------------------------------------------


def test_score_quality_column_a_sensor_problem_is_never_an_anomaly(tmp_path):
    from edge_asd.audio import read_wav, write_wav

    bundle = copy_bundle(tmp_path)
    normal, anomaly = machine_clips(tmp_path / "clips", ["normal", "anomaly"])
    x = read_wav(normal)[0]
    write_wav(tmp_path / "clips" / "002_silent.wav", np.zeros_like(x), SR)
    write_wav(tmp_path / "clips" / "003_clipped.wav", np.clip(x * 20, -1, 1), SR)
    write_wav(tmp_path / "clips" / "004_off.wav", noise(np.random.default_rng(4), x.shape[0], 1, -60), SR)
    out = tmp_path / "scores.csv"
    result = edge_asd("score", bundle, tmp_path / "clips", "--csv", out)
    assert result.returncode == 0, result.stderr
    rows = out.read_text().splitlines()
    assert rows[0] == "file,score,decision,quality"
    got = {r.split(",")[0].rsplit("_", 1)[-1][:-4]: (float(r.split(",")[1]), int(r.split(",")[2]), r.split(",")[3]) for r in rows[1:]}
    assert got["normal"][1:] == (0, "ok") and got["anomaly"][1:] == (1, "ok")
    assert got["silent"][1:] == (0, "silence") and got["clipped"][1:] == (0, "clipping")
    assert got["off"][1:] == (0, "machine_idle")
    # Each of them scores far above the threshold: without the quality check each was an anomaly.
    for name in ("silent", "clipped", "off"):
        assert got[name][0] > SEPARATING_THRESHOLD, got
    assert "002_silent.wav: not decided: silence (a sensor problem, not the machine)" in result.stderr
    assert "004_off.wav: not decided: machine_idle (the machine is off)" in result.stderr
