"""Is the false-alarm rate the alarm rules are calibrated for the rate a user observes on normal sound?

    python -m benchmarks.alarm_calibration [--seeds 0,1,2] [--hours 7] [--calibration-minutes 30]
                                           [--variants plain,drift] [--resume]

Checked at rates one can count in hours of audio: device targets of one false alarm an hour and ten
an hour (``false_alarms_per_day`` 24 and 240). Per seed and stream variant:

1. **Bundle.** ``trainer.demo.run_demo(quick=True, seed=seed)`` trains the demo's small synthetic-fan
   bundle (short-conv-ae, int8 on the device); ``--resume`` re-uses one found under ``--work``.
2. **Calibration recording.** ``--calibration-minutes`` of *new* normal clips of the same synthetic
   machine (``trainer.synth.synth_clip``, clip indices from 100 000 on, never trained on), written as
   wav files and scored as one stream exactly as the service scores it
   (:func:`edge_asd.decision.calibration.score_periods`, int8, 10 s periods). :func:`fit_alarm_rules` fits,
   for each target, the evidence rule (CUSUM, half the rate) and the threshold (gamma tail, the other half).
3. **Test stream.** ``--hours`` of further new normal clips (disjoint indices), scored once as one
   long stream; its period scores are replayed through :class:`edge_asd.decision.alarm.AlarmLogic` with the
   demo profile's debounce (``firmware_config/default.toml``: 10 s periods, 2 of 3, recovery 2,
   refractory 0) and each target's threshold and evidence rule. Each period score is fed as a
   single window at ``i * period_s``: a period closes when the next one arrives (the last is closed
   by one extra window, never flushed as a zero-length partial period).
4. **Counts against promises.** Onsets by rule (evidence only, period only, both) and in total,
   against the rate x the *alarm-off* hours (after an onset the alarm stays on until back-to-normal:
   dead time in which no onset can happen, so it is not exposure):

   - evidence rule (onsets it took part in): expected ``EVIDENCE_SHARE x target x off-hours``;
     two-sided check against the exact Poisson 95 % range of that expected count;
   - threshold, per period (the quantity it is calibrated for): normal periods above it, expected
     ``p_period x periods``; two-sided check;
   - period rule (k-of-n onsets it took part in) and the device total: the calibration only promises
     an upper bound (``share x target`` and ``target`` x off-hours): one-sided check against the upper
     end of the 95 % range. The k-of-n rule's onsets are far rarer than its per-period rate; the
     figure it would have for independent periods exceeding with exactly ``p`` is given beside it.

   Every count also gets the observed / expected ratio with the exact (Garwood) 95 % interval of
   the observed count, and an exact two-sided Poisson p-value. Pooled over seeds, the counts add.

Stream variants: ``plain``: independent synthetic clips at the training SNR (6 dB), so successive
period scores are close to uncorrelated and the sieve bootstrap's autoregression is (nearly) void:
this variant does not exercise correlated scores. ``drift``: the machine-to-background SNR wanders
slowly (an Ornstein-Uhlenbeck process, ``--drift-snr-sd`` dB around 6 dB with a correlation time
of ``--drift-minutes``, stationary from the first clip, the same law for calibration and test,
independent draws), which makes successive period scores correlated, as on a real machine whose
load changes over minutes. Note that the per-seed check conditions on one calibration recording:
the calibration promises its rate on average over recordings (the evidence rule pays for the
reference's uncertainty with a higher ``h``), so a single recording's rate may miss its promise by
more than Poisson noise while the pooled rate keeps it.

Writes ``benchmarks/results/alarm_calibration.{json,md}`` (``--results`` to change the folder); the
JSON holds the command line, every fit, every onset and the period scores themselves (rounded), so
the replay can be redone without audio. About 27 min on 2 shared cores with the defaults (the
synthesis of the clips dominates: 30-60 s per hour of audio); ``--resume`` re-uses the bundles and
period scores under ``--work`` and redoes only the fits and replays (seconds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from benchmarks._common import REPO, comma_list, machine, markdown_table  # sets one thread per library first

import numpy as np  # noqa: E402

NAME = "alarm_calibration"
DEFAULT_WORK = Path("/tmp/edge-asd-alarm-calibration")
TARGETS_PER_DAY = (24.0, 240.0)
"""Device false-alarm targets, per day: one an hour and ten an hour."""
ALARM = {"period_s": 10.0, "onset_k": 2, "onset_n": 3, "recovery_m": 2, "refractory_s": 0.0}
"""The demo profile's alarm (firmware_config/default.toml)."""
MACHINE, MACHINE_ID, SNR_DB, CLIP_S, SR = "fan", "00", 6.0, 10.0, 16000
INDEX_BASE = {("plain", "calibration"): 100_000, ("plain", "test"): 200_000,
              ("drift", "calibration"): 1_100_000, ("drift", "test"): 1_200_000}
"""First clip index of each stream: far above the training data's (0-39), disjoint between streams."""
MAX_CLIPS = 100_000
VARIANTS = ("plain", "drift")
LEVEL = 0.95


def log(msg: str) -> None:
    click.echo(msg, err=True)


# --------------------------------------------------------------------------------------------- audio


def stream_snrs(variant: str, part: str, n_clips: int, seed: int, *, drift_sd: float, drift_minutes: float) -> np.ndarray:
    """SNR of each clip of a stream, dB: constant (``plain``) or a stationary Ornstein-Uhlenbeck
    wander around :data:`SNR_DB` sampled once per clip (``drift``)."""
    if variant == "plain":
        return np.full(n_clips, SNR_DB)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919, 0 if part == "calibration" else 1]))
    a = math.exp(-CLIP_S / (drift_minutes * 60.0))
    u = np.empty(n_clips)
    u[0] = rng.standard_normal()
    shocks = rng.standard_normal(n_clips) * math.sqrt(1.0 - a * a)
    for i in range(1, n_clips):
        u[i] = a * u[i - 1] + shocks[i]
    return SNR_DB + drift_sd * u


def score_stream(detector: Any, folder: Path, *, seed: int, base: int, snrs: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Write one new normal clip per SNR (indices ``base + i``) into ``folder``, score them as one
    stream as the service does, delete them; return the period scores and timings."""
    from edge_asd.audio import write_wav
    from edge_asd.audio.sources import FileListSource
    from edge_asd.decision.calibration import score_periods
    from trainer.synth import synth_clip

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    paths = []
    for i, snr in enumerate(snrs):
        clip = synth_clip(MACHINE, MACHINE_ID, label="normal", index=base + i, snr_db=float(snr), channels=1,
                          duration_s=CLIP_S, sr=SR, seed=seed)
        path = folder / f"{i:06d}.wav"
        write_wav(path, clip.samples, clip.sr)
        paths.append(path)
    t1 = time.perf_counter()
    scores, audio_s = score_periods(detector, FileListSource(paths, sr=SR), period_s=ALARM["period_s"])
    t2 = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    return scores, {"synth_s": t1 - t0, "score_s": t2 - t1, "audio_s": audio_s}


def cached_scores(path: Path, key: dict[str, Any], make, *, resume: bool) -> tuple[np.ndarray, dict[str, float], bool]:
    """Period scores from ``path`` when ``--resume`` and the stream's settings match, else ``make()`` (and cache)."""
    meta = path.with_suffix(".json")
    if resume and path.is_file() and meta.is_file():
        saved = json.loads(meta.read_text())
        if saved.get("key") == key:
            return np.load(path), saved.get("timing", {}), True
    scores, timing = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, scores)
    meta.write_text(json.dumps({"key": key, "timing": timing}))
    return scores, timing, False


# --------------------------------------------------------------------------------------------- statistics


def poisson_range(mu: float) -> tuple[int, int]:
    """Counts a Poisson(mu) count falls between with probability >= 95 % (exact, equal tails)."""
    from scipy.stats import poisson

    if mu <= 0:
        return 0, 0
    a = (1 - LEVEL) / 2
    return int(poisson.ppf(a, mu)), int(poisson.ppf(1 - a, mu))


def garwood(k: int) -> tuple[float, float]:
    """Exact 95 % interval of a Poisson mean from one observed count ``k`` (the chi-square form)."""
    from scipy.stats import chi2

    a = (1 - LEVEL) / 2
    lo = 0.0 if k == 0 else float(chi2.ppf(a, 2 * k) / 2)
    return lo, float(chi2.ppf(1 - a, 2 * k + 2) / 2)


def poisson_p(k: int, mu: float) -> float:
    """Exact two-sided p-value of count ``k`` under Poisson(mu) (twice the smaller tail, at most 1)."""
    from scipy.stats import poisson

    if mu <= 0:
        return 1.0 if k == 0 else 0.0
    return float(min(1.0, 2 * min(poisson.cdf(k, mu), poisson.sf(k - 1, mu))))


def check(observed: int, mu: float, kind: str) -> dict[str, Any]:
    """One count against its expectation: ``kind`` ``"expected"`` (two-sided) or ``"bound"`` (only
    the upper end counts: the calibration promises at most ``mu``)."""
    lo, hi = poisson_range(mu)
    glo, ghi = garwood(observed)
    inside = observed <= hi if kind == "bound" else lo <= observed <= hi
    return {
        "observed": int(observed), "expected": float(mu), "kind": kind, "range95": [lo, hi], "inside": bool(inside),
        "ratio": float(observed / mu) if mu > 0 else None,
        "ratio_ci95": [glo / mu, ghi / mu] if mu > 0 else None,
        "p_two_sided": poisson_p(observed, mu),
    }


def autocorrelation(x: np.ndarray, lags: int = 3) -> list[float]:
    c = np.asarray(x, dtype=np.float64) - np.mean(x)
    d = float(c @ c)
    return [float(c[: c.size - k] @ c[k:] / d) if d > 0 and c.size > k else math.nan for k in range(1, lags + 1)]


def describe(scores: np.ndarray) -> dict[str, Any]:
    from edge_asd.decision.evidence import ar_order

    order, phi = ar_order(scores)
    return {"n_periods": int(scores.size), "mean": float(scores.mean()), "std": float(scores.std(ddof=1)),
            "max": float(scores.max()), "skewness": float(((scores - scores.mean()) ** 3).mean() / scores.std() ** 3),
            "quantiles": {q: float(np.quantile(scores, float(q))) for q in ("0.5", "0.9", "0.99", "0.999")},
            "acf_lag1_3": autocorrelation(scores), "ar_order_bic": int(order),
            "ar_coefficients": [float(v) for v in phi]}


# --------------------------------------------------------------------------------------------- replay


def replay(scores: np.ndarray, rules: Any) -> dict[str, Any]:
    """Feed the period scores through the device's alarm with the fitted threshold and evidence rule."""
    from edge_asd.decision.alarm import EVENT_ONSET, RULE_EVIDENCE, RULE_PERIOD, AlarmConfig, AlarmLogic

    period_s = ALARM["period_s"]
    alarm = AlarmLogic(AlarmConfig(**ALARM), threshold=rules.threshold.threshold, evidence=rules.evidence)
    counts = {"evidence_only": 0, "period_only": 0, "both": 0}
    onsets, recoveries = [], 0
    off_periods = decided = exceed = 0
    # Each period score as one window at i * period_s; the window at n * period_s closes the last
    # period (its own period is never closed, so it counts for nothing).
    values = np.append(scores, scores[-1])
    for i, value in enumerate(values):
        was_on = alarm.alarm
        res = alarm.update(float(value), i * period_s)
        if res is None:
            continue
        if not res.decided:
            raise RuntimeError(f"period at {res.start_s} s was not decided: {res.reason}")
        decided += 1
        exceed += int(res.anomalous)
        off_periods += int(not was_on)
        if res.event == EVENT_ONSET:
            ev, pe = RULE_EVIDENCE in res.rules, RULE_PERIOD in res.rules
            counts["both" if ev and pe else "evidence_only" if ev else "period_only"] += 1
            period = int(round(res.start_s / period_s))
            onsets.append({"period": period, "rules": list(res.rules), "score": float(res.score),
                           "evidence": res.evidence, "shift_start_s": res.shift_start_s, "shift_sd": res.shift_sd,
                           "excursion_periods": None if res.shift_start_s is None else period - int(round(res.shift_start_s / period_s)) + 1})
        elif res.event is not None:
            recoveries += 1
    if decided != scores.size:
        raise RuntimeError(f"{decided} periods decided of {scores.size}")
    ev = rules.evidence
    # Periods whose standardised score alone reaches h from zero: no simulated normal period of the
    # bootstrap (which only redraws the recording's residuals) can do that beyond the recording's highest.
    single = None if ev is None else int(sum(ev.standardise(v) - ev.allowance >= ev.decision_level for v in scores))
    return {"single_period_crossings": single, "counts": counts, "onsets_total": len(onsets), "recoveries": recoveries, "periods": decided,
            "alarm_off_periods": off_periods, "alarm_off_h": off_periods * period_s / 3600.0,
            "alarm_on_fraction": 1.0 - off_periods / decided, "exceedances": exceed, "onsets": onsets}


def judge(rep: dict[str, Any], rules: Any) -> dict[str, dict[str, Any]]:
    """Every count of one replay against what the calibration promised."""
    from edge_asd.decision.calibration import EVIDENCE_SHARE

    target = rules.false_alarms_per_day
    off_h = rep["alarm_off_h"]
    c = rep["counts"]
    share = EVIDENCE_SHARE if rules.evidence is not None else 0.0
    p = rules.threshold.p_period
    # k-of-n onsets if the periods were independent and each exceeded with exactly p: an alarm-off
    # period fires when it and at least one of the two before it exceed (k = 2, n = 3).
    k_of_n = p * (1.0 - (1.0 - p) ** (ALARM["onset_n"] - 1))
    out = {
        "evidence": check(c["evidence_only"] + c["both"], share * target / 24.0 * off_h, "expected"),
        "threshold_periods": check(rep["exceedances"], p * rep["periods"], "expected"),
        "period": check(c["period_only"] + c["both"], (1.0 - share) * target / 24.0 * off_h, "bound"),
        "device": check(rep["onsets_total"], target / 24.0 * off_h, "bound"),
    }
    out["period"]["independent_k_of_n_expected"] = float(k_of_n * rep["alarm_off_periods"])
    if rules.evidence is None:
        out["evidence"]["note"] = "no evidence rule fitted: " + rules.evidence_note
    return out


def rule_record(rules: Any) -> dict[str, Any]:
    th = dataclasses.asdict(rules.threshold)
    ev = None if rules.evidence is None else rules.evidence.to_dict()
    return {
        "false_alarms_per_day": rules.false_alarms_per_day,
        "threshold": th,
        "evidence": ev,
        "evidence_note": rules.evidence_note,
        "summary": {
            "threshold": rules.threshold.threshold, "threshold_extrapolated": bool(rules.threshold.extrapolated),
            "p_period": rules.threshold.p_period,
            "h": None if ev is None else ev["decision_level"],
            "ar_order": None if ev is None else ev["details"]["ar_order"],
            "ar_coefficients": None if ev is None else ev["details"]["ar_coefficients"],
            "h_extrapolated": None if ev is None else bool(ev["details"]["extrapolated"]),
        },
    }


# --------------------------------------------------------------------------------------------- run


def train_bundle(work: Path, seed: int, *, resume: bool) -> tuple[Path, dict[str, Any]]:
    from trainer.demo import run_demo

    out = work / f"seed{seed}" / "demo"
    info = out / "train.json"
    if resume and info.is_file() and (out / "bundle").is_dir():
        saved = json.loads(info.read_text())
        log(f"seed {seed}: re-using the bundle in {out / 'bundle'}")
        return out / "bundle", {**saved, "resumed": True}
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = run_demo(out, quick=True, seed=seed, log=lambda s: log(f"  [demo] {s}"))
    ev = res["evaluation"]
    saved = {"elapsed_s": time.perf_counter() - t0, "evaluation": _jsonable(ev), "resumed": False}
    info.write_text(json.dumps(saved, indent=1))
    return Path(res["bundle"]), saved


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def run_seed(seed: int, *, variants: list[str], hours: float, calibration_minutes: float, drift_sd: float,
             drift_minutes: float, work: Path, resume: bool) -> dict[str, Any]:
    from edge_asd.decision.calibration import fit_alarm_rules
    from edge_asd.scoring.detector import Detector

    t_seed = time.perf_counter()
    bundle, training = train_bundle(work, seed, resume=resume)
    detector = Detector.from_bundle(bundle, model="int8")
    n_cal = int(round(calibration_minutes * 60 / CLIP_S))
    n_test = int(round(hours * 3600 / CLIP_S))
    record: dict[str, Any] = {"seed": seed, "bundle": str(bundle), "training": training, "variants": {}}
    for variant in variants:
        streams = {}
        for part, n in (("calibration", n_cal), ("test", n_test)):
            snrs = stream_snrs(variant, part, n, seed, drift_sd=drift_sd, drift_minutes=drift_minutes)
            base = INDEX_BASE[(variant, part)]
            key = {"seed": seed, "variant": variant, "part": part, "n_clips": n, "base": base, "snr_db": SNR_DB,
                   "drift_sd": drift_sd if variant == "drift" else None,
                   "drift_minutes": drift_minutes if variant == "drift" else None,
                   "bundle_trained_s": training.get("elapsed_s")}
            scores, timing, reused = cached_scores(
                work / f"seed{seed}" / f"{variant}_{part}.npy", key,
                lambda: score_stream(detector, work / f"seed{seed}" / "wavs", seed=seed, base=base, snrs=snrs), resume=resume)
            log(f"seed {seed} {variant} {part}: {scores.size} periods ({n} clips, indices {base}..{base + n - 1})"
                + (" re-used" if reused else f", synth {timing['synth_s']:.0f} s, scoring {timing['score_s']:.0f} s"))
            streams[part] = {"scores": scores, "timing": timing, "reused": reused,
                             "snr_db": {"min": float(snrs.min()), "mean": float(snrs.mean()), "max": float(snrs.max())},
                             "clip_indices": [base, base + n - 1]}
        cal, test = streams["calibration"]["scores"], streams["test"]["scores"]
        targets = {}
        for target in TARGETS_PER_DAY:
            t0 = time.perf_counter()
            rules = fit_alarm_rules(cal, period_s=ALARM["period_s"], false_alarms_per_day=target)
            fit_s = time.perf_counter() - t0
            rep = replay(test, rules)
            checks = judge(rep, rules)
            targets[f"{target:g}"] = {"rules": rule_record(rules), "replay": rep, "checks": checks, "fit_s": fit_s}
            s = rule_record(rules)["summary"]
            ev_txt = "no evidence rule" if s["h"] is None else f"h {s['h']:.3g} (AR {s['ar_order']}, extrapolated {s['h_extrapolated']})"
            log(f"seed {seed} {variant} {target:g}/day: {ev_txt}, "
                f"threshold {s['threshold']:.4g}; onsets {rep['counts']} in {rep['alarm_off_h']:.2f} alarm-off h; "
                f"evidence {checks['evidence']['observed']} vs {checks['evidence']['expected']:.2f}, "
                f"exceedances {checks['threshold_periods']['observed']} vs {checks['threshold_periods']['expected']:.2f}")
        # Secondary: the test stream's first half as a long calibration recording, its second half as the test.
        split = {}
        half = test.size // 2
        for target in TARGETS_PER_DAY:
            try:
                rules = fit_alarm_rules(test[:half], period_s=ALARM["period_s"], false_alarms_per_day=target)
            except Exception as exc:  # noqa: BLE001 (too little audio in a tiny run: recorded, not fatal)
                split[f"{target:g}"] = {"error": str(exc)}
                continue
            rep = replay(test[half:], rules)
            split[f"{target:g}"] = {"rules": rule_record(rules)["summary"], "checks": judge(rep, rules),
                                    "replay": {k: v for k, v in rep.items() if k != "onsets"}}
        record["variants"][variant] = {
            "calibration": {**{k: v for k, v in streams["calibration"].items() if k != "scores"}, "stats": describe(cal)},
            "test": {**{k: v for k, v in streams["test"].items() if k != "scores"}, "stats": describe(test)},
            "targets": targets,
            "split": split,
            # New normal periods exceed the recording's highest with probability 1 / (n + 1) each, whatever the
            # distribution (exchangeability); the bootstrap never draws one, only the tail beyond says how far.
            "tail": {"test_above_calibration_max": int((test > cal.max()).sum()),
                     "expected_if_exchangeable": float(test.size / (cal.size + 1))},
            "scores": {"calibration": [float(f"{v:.6g}") for v in cal], "test": [float(f"{v:.6g}") for v in test]},
        }
    record["elapsed_s"] = time.perf_counter() - t_seed
    return record


QUANTITIES = ("evidence", "threshold_periods", "period", "device")
LABELS = {"evidence": "evidence rule: onsets", "threshold_periods": "threshold: periods above",
          "period": "k-of-n rule: onsets", "device": "device: all onsets"}


def pooled(seeds: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Counts and expectations added over seeds, per variant, target and quantity."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in seeds[0]["variants"]:
        out[variant] = {}
        for target in seeds[0]["variants"][variant]["targets"]:
            out[variant][target] = {}
            for q in QUANTITIES:
                cs = [s["variants"][variant]["targets"][target]["checks"][q] for s in seeds]
                row = check(sum(c["observed"] for c in cs), sum(c["expected"] for c in cs), cs[0]["kind"])
                if q == "period":
                    row["independent_k_of_n_expected"] = sum(c["independent_k_of_n_expected"] for c in cs)
                out[variant][target][q] = row
    return out


def pooled_split(seeds: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """As :func:`pooled` for the split check (first half of the test stream calibrates, second half tests)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in seeds[0]["variants"]:
        out[variant] = {}
        for target in seeds[0]["variants"][variant].get("split", {}):
            runs = [s["variants"][variant]["split"][target] for s in seeds]
            if any("checks" not in r for r in runs):
                continue
            out[variant][target] = {}
            for q in QUANTITIES:
                cs = [r["checks"][q] for r in runs]
                out[variant][target][q] = check(sum(c["observed"] for c in cs), sum(c["expected"] for c in cs), cs[0]["kind"])
    return out


def _ratio(c: dict[str, Any]) -> str:
    if c["ratio"] is None:
        return "–"
    return f"{c['ratio']:.2f} [{c['ratio_ci95'][0]:.2f}, {c['ratio_ci95'][1]:.2f}]"


def _verdict(c: dict[str, Any]) -> str:
    if c["kind"] == "bound":
        return "yes (≤ bound)" if c["inside"] else "**no: above**"
    if c["inside"]:
        return "yes"
    return "**no: above**" if c["observed"] > c["range95"][1] else "**no: below**"


def markdown(result: dict[str, Any]) -> str:
    meta, seeds, pool = result["meta"], result["seeds"], result["pooled"]
    lines = [
        "# Alarm calibration: promised against observed false-alarm rates on normal sound",
        "",
        f"`{meta['command']}` — {meta['wall_s'] / 60:.1f} min on {meta['machine']['nproc']} cores "
        f"({meta['machine']['cpu']})" + _reuse_note(seeds) + ".",
        "",
        f"Per seed: the demo bundle (`run_demo(quick=True)`, synthetic fan id 00, int8); "
        f"{meta['calibration_minutes']:g} min of new normal clips scored as one stream → `fit_alarm_rules` for each target "
        f"(evidence rule half the rate, threshold the other half); {meta['hours']:g} h of further new normal clips "
        f"scored once and replayed through `AlarmLogic` (10 s periods, {ALARM['onset_k']} of {ALARM['onset_n']}, "
        f"recovery {ALARM['recovery_m']}, refractory 0). Expected counts use the alarm-off hours (the alarm's dead "
        "time is no exposure). *Range* is the exact Poisson 95 % range of the expected count; *ratio* is "
        "observed / expected with the exact (Garwood) 95 % interval of the observed count. Evidence onsets and "
        "threshold exceedances per period are what the calibration targets (two-sided check); for the k-of-n rule's "
        "onsets and the device total it only promises an upper bound (one-sided check).",
        "",
        "Bundles (the demo's test clips, int8): " + ", ".join(
            f"seed {s['seed']} AUC {s['training']['evaluation'].get('auc_int8', float('nan')):.3f}" for s in seeds) + ".",
        "",
    ]
    for variant in meta["variants"]:
        title = {"plain": "independent clips at 6 dB (period scores close to uncorrelated)",
                 "drift": f"SNR wandering slowly (OU, sd {meta['drift_snr_sd']:g} dB around 6 dB, correlation time "
                          f"{meta['drift_minutes']:g} min)"}[variant]
        lines += [f"## Stream `{variant}`: {title}", ""]
        rows = []
        for target in pool[variant]:
            per_h = float(target) / 24
            for q in QUANTITIES:
                for s in seeds:
                    c = s["variants"][variant]["targets"][target]["checks"][q]
                    rows.append([f"{per_h:g}/h", s["seed"], LABELS[q], c["observed"], f"{c['expected']:.2f}",
                                 f"{c['range95'][0]}–{c['range95'][1]}", _verdict(c), _ratio(c)])
                c = pool[variant][target][q]
                rows.append([f"{per_h:g}/h", "**all**", LABELS[q], f"**{c['observed']}**", f"**{c['expected']:.2f}**",
                             f"{c['range95'][0]}–{c['range95'][1]}", _verdict(c), _ratio(c)])
        lines += [markdown_table(["target", "seed", "count", "observed", "expected (bound)", "95 % range", "inside",
                                  "ratio [95 % CI]"], rows), ""]
        detail = []
        for target in pool[variant]:
            for s in seeds:
                v = s["variants"][variant]
                t = v["targets"][target]
                sm, rep = t["rules"]["summary"], t["replay"]
                ev = t["rules"]["evidence"]
                cal_max_z = test_max_z = "–"
                if ev is not None:
                    z = lambda x: (x - ev["reference_mean"]) / ev["reference_std"]  # noqa: E731
                    cal_max_z = f"{z(v['calibration']['stats']['max']):.1f}"
                    test_max_z = f"{z(v['test']['stats']['max']):.1f}"
                detail.append([f"{float(target) / 24:g}/h", s["seed"],
                               "–" if sm["h"] is None else f"{sm['h']:.2f}", sm["ar_order"],
                               sm["h_extrapolated"], f"{sm['threshold']:.4g}", sm["threshold_extrapolated"],
                               f"{rep['alarm_off_h']:.2f} / {rep['periods'] * ALARM['period_s'] / 3600:.2f}",
                               f"{cal_max_z} / {test_max_z}",
                               "–" if rep["single_period_crossings"] is None else rep["single_period_crossings"],
                               " ".join(f"{a:.2f}" for a in v["calibration"]["stats"]["acf_lag1_3"]),
                               " ".join(f"{a:.2f}" for a in v["test"]["stats"]["acf_lag1_3"])])
        lines += ["Fits (`rule.details`) and streams (z: standardised with the evidence rule's reference; *crossing h "
                  "alone*: test periods whose z - k reaches h, i.e. one period raises an evidence onset by itself):", "",
                  markdown_table(["target", "seed", "h (sd)", "AR order", "h extrapolated", "threshold",
                                  "threshold extrapolated", "alarm-off h / test h", "max z calibration / test",
                                  "test periods crossing h alone", "acf lag 1-3, calibration", "acf lag 1-3, test"], detail), ""]
    split = result.get("pooled_split") or {}
    if any(split.values()):
        lines += [f"## Long calibration: the test stream split in halves ({meta['hours'] / 2:g} h calibrate, "
                  f"{meta['hours'] / 2:g} h test)", "",
                  "The same fits and replay, with the first half of each seed's test stream as the calibration recording "
                  "instead of the short one: does the promise hold when the recording is long? Pooled over seeds; h and "
                  "threshold per seed.", ""]
        rows = []
        for variant in split:
            for target in split[variant]:
                fits = "; ".join(
                    f"{s['variants'][variant]['split'][target]['rules']['h'] or float('nan'):.2f} / "
                    f"{s['variants'][variant]['split'][target]['rules']['threshold']:.3g} "
                    f"(AR {s['variants'][variant]['split'][target]['rules']['ar_order']})" for s in seeds)
                for q in QUANTITIES:
                    c = split[variant][target][q]
                    rows.append([variant, f"{float(target) / 24:g}/h", LABELS[q], c["observed"], f"{c['expected']:.2f}",
                                 f"{c['range95'][0]}–{c['range95'][1]}", _verdict(c), _ratio(c), fits if q == "evidence" else ""])
        lines += [markdown_table(["stream", "target", "count", "observed", "expected (bound)", "95 % range", "inside",
                                  "ratio [95 % CI]", "h / threshold per seed"], rows), ""]
    lines += ["## Interpretation", ""] + interpretation(result) + [""]
    return "\n".join(lines)


def _reuse_note(seeds: list[dict[str, Any]]) -> str:
    """When bundles or scores were re-used (``--resume``): how long computing them took."""
    reused = any(s["training"].get("resumed") for s in seeds) or any(
        v[part]["reused"] for s in seeds for v in s["variants"].values() for part in ("calibration", "test"))
    if not reused:
        return ""
    cost = sum(s["training"].get("elapsed_s", 0.0) for s in seeds) + sum(
        v[part]["timing"].get("synth_s", 0.0) + v[part]["timing"].get("score_s", 0.0)
        for s in seeds for v in s["variants"].values() for part in ("calibration", "test"))
    return (f"; bundles and period scores re-used from an earlier run (`--resume`), whose training, synthesis and "
            f"scoring took {cost / 60:.1f} min")


def interpretation(result: dict[str, Any]) -> list[str]:
    """Sentences computed from the results (no hand-written verdicts: a re-run rewrites them)."""
    meta, seeds, pool = result["meta"], result["seeds"], result["pooled"]
    out = []
    misses = []
    for variant in meta["variants"]:
        for target in pool[variant]:
            for q in QUANTITIES:
                for s in seeds + [None]:
                    c = pool[variant][target][q] if s is None else s["variants"][variant]["targets"][target]["checks"][q]
                    if not c["inside"]:
                        who = "all seeds" if s is None else f"seed {s['seed']}"
                        misses.append(
                            f"- `{variant}`, {float(target) / 24:g}/h, {who}, {LABELS[q]}: observed {c['observed']} where "
                            f"{c['expected']:.2f} was {'the bound' if c['kind'] == 'bound' else 'expected'} (95 % range "
                            f"{c['range95'][0]}–{c['range95'][1]}): {_ratio(c)} times the promise, p = {c['p_two_sided']:.2g}.")
    n_checks = sum(len(pool[v]) * len(QUANTITIES) * (len(seeds) + 1) for v in meta["variants"])
    if misses:
        out += [f"**{len(misses)} of {n_checks} checks fall outside their 95 % range** (about {0.05 * n_checks:.1f} would "
                "by chance alone if every promise held exactly; the pooled rows are the stronger test):", ""] + misses + [""]
    else:
        out += [f"Every one of the {n_checks} counts, per seed and pooled, lies inside its 95 % range (bounds: at or "
                "below the upper end).", ""]
    for variant in meta["variants"]:
        out.append(f"`{variant}`:")
        for target in pool[variant]:
            p = pool[variant][target]
            per_h = float(target) / 24
            ev, th, pe, dev = p["evidence"], p["threshold_periods"], p["period"], p["device"]
            off_h = sum(s["variants"][variant]["targets"][target]["replay"]["alarm_off_h"] for s in seeds)
            onsets = [o for s in seeds for o in s["variants"][variant]["targets"][target]["replay"]["onsets"]]
            ev_onsets = [o for o in onsets if "evidence" in o["rules"]]
            short = sum(1 for o in ev_onsets if o["excursion_periods"] is not None and o["excursion_periods"] <= 2)
            single = sum(s["variants"][variant]["targets"][target]["replay"]["single_period_crossings"] or 0 for s in seeds)
            no_rule = all(s["variants"][variant]["targets"][target]["rules"]["evidence"] is None for s in seeds)
            ev_text = ("no evidence rule was fitted (too little calibration audio); the threshold had the whole rate. "
                       if no_rule else
                       f"Evidence rule {ev['observed']} against {ev['expected']:.1f} expected ({_ratio(ev)}); of its onsets "
                       f"{short} came from an excursion of at most 2 periods, and {single} test periods would cross h alone. ")
            out.append(
                f"- target {per_h:g}/h: the device raised {dev['observed']} onsets in {off_h:.1f} alarm-off hours, "
                f"{dev['observed'] / off_h:.2f}/h ({dev['observed'] / off_h / per_h:.2f} x the target). " + ev_text + "Threshold: "
                f"{th['observed']} periods above against {th['expected']:.1f} expected ({_ratio(th)}). k-of-n rule: "
                f"{pe['observed']} onsets against a bound of {pe['expected']:.1f} ({pe['independent_k_of_n_expected']:.2g} "
                "if periods were independent and exceeded with exactly the calibrated p).")
        cal_acf = [s["variants"][variant]["calibration"]["stats"]["acf_lag1_3"][0] for s in seeds]
        test_acf = [s["variants"][variant]["test"]["stats"]["acf_lag1_3"][0] for s in seeds]
        orders = [s["variants"][variant]["targets"][next(iter(pool[variant]))]["rules"]["summary"]["ar_order"] for s in seeds]
        skew = [s["variants"][variant]["test"]["stats"]["skewness"] for s in seeds]
        for target, p in (result.get("pooled_split") or {}).get(variant, {}).items():
            out.append(f"- long calibration ({meta['hours'] / 2:g} h, split), target {float(target) / 24:g}/h: evidence rule "
                       f"{p['evidence']['observed']} against {p['evidence']['expected']:.1f} ({_ratio(p['evidence'])}), "
                       f"threshold {p['threshold_periods']['observed']} periods against "
                       f"{p['threshold_periods']['expected']:.1f} ({_ratio(p['threshold_periods'])}).")
        above = sum(s["variants"][variant]["tail"]["test_above_calibration_max"] for s in seeds)
        exch = sum(s["variants"][variant]["tail"]["expected_if_exchangeable"] for s in seeds)
        out.append(f"- {above} test periods scored above their calibration recording's highest period ({exch:.0f} expected "
                   "if calibration and test periods are exchangeable: one per n + 1 periods, about "
                   f"{3600 / ALARM['period_s'] / (meta['calibration_minutes'] * 60 / CLIP_S + 1):.1f}/h here). The sieve "
                   "bootstrap only redraws recorded residuals, so it never simulates such a period; each one that reaches "
                   "h + k raises an evidence onset by itself (column *crossing h alone*), at a rate the calibration cannot see.")
        out.append(f"- lag-1 autocorrelation of the period scores: calibration {', '.join(f'{a:.2f}' for a in cal_acf)}, "
                   f"test {', '.join(f'{a:.2f}' for a in test_acf)} (per seed); AR orders fitted: "
                   f"{', '.join(str(o) for o in orders)}; skewness of the test scores {', '.join(f'{a:.1f}' for a in skew)}.")
        out.append("")
    out += [
        "Caveats:",
        "",
        "- The per-seed rows condition on one calibration recording. The calibration promises its rate on average "
        "over recordings (the evidence rule re-estimates the reference in every bootstrap replicate and pays for a short "
        "recording with a higher h), so a single recording may miss by more than Poisson noise; the pooled rows average "
        f"over {len(seeds)} recording(s) only.",
        "- The k-of-n rule and the device total are checked against bounds only: the calibration gives the threshold "
        "half the budget per *period*, and the debounce (2 of 3) makes onsets much rarer than that.",
        "- The Poisson ranges assume independent onsets; on correlated scores onsets cluster and the ranges are too "
        "narrow.",
        "- Where the heavy tail comes from (checked by hand on the stored scores of seeds 0-2 with the defaults, not "
        "recomputed by this script): the synthetic generator gives every clip a random gain (1.5 dB sd); the quick demo "
        "bundles (18 training clips) score clips 3 dB or more below the nominal level (about 2 % of clips) far higher "
        "than the rest (seed 0: 19 of its 20 highest test periods are clips 2.8-5.1 dB below nominal; seed 2: its 5 "
        "highest, 4-5 dB below). A 30-minute recording holds only a handful of them.",
    ]
    if "drift" not in meta["variants"]:
        out.append("- Synthetic clips are independent of each other, so the period scores are close to uncorrelated: "
                   "this check does not exercise the sieve bootstrap on correlated scores (no `drift` stream was run).")
    else:
        out.append("- The `plain` stream's clips are independent, so its period scores are close to uncorrelated: it does "
                   "not exercise correlated scores. The `drift` stream does, with the same law for calibration and test; "
                   f"its {meta['calibration_minutes']:g}-minute calibration holds only "
                   f"{meta['calibration_minutes'] / meta['drift_minutes']:.0f} correlation times of the drift.")
    return out


def write(result: dict[str, Any], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    # The period scores go on one line per stream (thousands of numbers), the rest indented.
    compact = {}
    doc = json.loads(json.dumps(result, default=float))
    for s in doc["seeds"]:
        for name, v in s["variants"].items():
            for part in ("calibration", "test"):
                token = f"@@scores-{s['seed']}-{name}-{part}@@"
                compact[json.dumps(token)] = json.dumps(v["scores"][part], separators=(",", ":"))
                v["scores"][part] = token
    text = json.dumps(doc, indent=1)
    for token, value in compact.items():
        text = text.replace(token, value)
    (results / f"{NAME}.json").write_text(text + "\n")
    (results / f"{NAME}.md").write_text(markdown(result))


@click.command()
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds (bundle, clips and drift).")
@click.option("--hours", type=float, default=7.0, show_default=True, help="Test stream per seed and variant, hours of audio.")
@click.option("--calibration-minutes", type=float, default=30.0, show_default=True,
              help="Calibration recording per seed and variant, minutes of audio.")
@click.option("--variants", default=",".join(VARIANTS), show_default=True, help=f"Comma-separated, of {', '.join(VARIANTS)}.")
@click.option("--drift-snr-sd", type=float, default=4.0, show_default=True, help="drift: sd of the SNR's wander, dB.")
@click.option("--drift-minutes", type=float, default=5.0, show_default=True, help="drift: correlation time of the wander, minutes.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORK, show_default=True,
              help="Bundles and cached period scores (the wav files are deleted once scored).")
@click.option("--resume", is_flag=True, help="Re-use bundles and period scores found under --work (same settings only).")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=REPO / "benchmarks" / "results",
              show_default=True, help="Folder for alarm_calibration.{json,md}.")
@click.option("--from-json", "from_json", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Only rewrite the markdown (beside the file) from a finished run's JSON.")
def main(seeds: str, hours: float, calibration_minutes: float, variants: str, drift_snr_sd: float, drift_minutes: float,
         work: Path, resume: bool, results: Path, from_json: Path | None) -> None:
    if from_json is not None:
        result = json.loads(from_json.read_text())
        text = markdown(result)
        from_json.with_suffix(".md").write_text(text)
        click.echo(text)
        return
    started = time.perf_counter()
    try:
        seed_list = [int(x) for x in comma_list(seeds, "--seeds")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    if any(s < 0 for s in seed_list):
        raise click.BadParameter("seeds must be >= 0", param_hint="--seeds")
    variant_list = comma_list(variants, "--variants")
    unknown = sorted(set(variant_list) - set(VARIANTS))
    if unknown:
        raise click.BadParameter(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}", param_hint="--variants")
    if not (0 < hours * 3600 / CLIP_S <= MAX_CLIPS):
        raise click.BadParameter(f"must be > 0 and at most {MAX_CLIPS * CLIP_S / 3600:g}", param_hint="--hours")
    if not (0 < calibration_minutes * 60 / CLIP_S <= MAX_CLIPS):
        raise click.BadParameter("must be > 0", param_hint="--calibration-minutes")
    if not (drift_snr_sd >= 0 and drift_minutes > 0):
        raise click.BadParameter("--drift-snr-sd must be >= 0 and --drift-minutes > 0")
    argv = " ".join(sys.argv[1:])
    meta = {"command": f"python -m benchmarks.{NAME}" + (f" {argv}" if argv else ""), "argv": sys.argv,
            "seeds": seed_list, "hours": hours, "calibration_minutes": calibration_minutes, "variants": variant_list,
            "drift_snr_sd": drift_snr_sd, "drift_minutes": drift_minutes, "targets_per_day": list(TARGETS_PER_DAY),
            "alarm": ALARM, "machine_sound": {"machine": MACHINE, "id": MACHINE_ID, "snr_db": SNR_DB, "clip_s": CLIP_S, "sr": SR},
            "index_base": {f"{v}/{p}": b for (v, p), b in INDEX_BASE.items()}, "machine": machine(), "work": str(work)}
    records = []
    for seed in seed_list:
        records.append(run_seed(seed, variants=variant_list, hours=hours, calibration_minutes=calibration_minutes,
                                drift_sd=drift_snr_sd, drift_minutes=drift_minutes, work=work, resume=resume))
        meta["wall_s"] = time.perf_counter() - started
        result = {"meta": meta, "seeds": records, "pooled": pooled(records), "pooled_split": pooled_split(records)}
        write(result, results)
        log(f"seed {seed} done ({records[-1]['elapsed_s']:.0f} s); wrote {results / NAME}.{{json,md}}")
    click.echo(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
