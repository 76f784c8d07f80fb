"""``python -m benchmarks``: every performance figure of the project, side by side, in one run.

    python -m benchmarks --quick                  # CI: small and fast; fails on a missing figure
    python -m benchmarks --update-readme          # full run; rewrites docs/performance.md (the benchmarks section)
    python -m benchmarks --toycar-results FILE    # full run, quality table from a finished toycar run

Writes ``benchmarks/results/<date>-<host>.{json,md}`` and prints the markdown. Sections: front end,
inference latency per model kind and runtime, end-to-end real-time factor against the reference
pipeline, memory / import time / model sizes, and float-vs-int8 quality parity.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, machine, markdown_table  # sets one thread per library first

import numpy as np  # noqa: E402

from benchmarks.toycar import frames_label  # noqa: E402

KINDS = ("dense-ae", "conv-ae", "lstm-ae", "cnn-lstm")
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "work"
README = REPO / "docs" / "performance.md"
MARK_START, MARK_END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
GOALS = {"e2e_speedup_min": 20.0, "rtf_max": 0.005, "int8_auc_delta_max": 0.005, "int8_kb_max": 256.0, "rss_mb_max": 150.0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_models(work: Path, *, quick: bool, seed: int = 0) -> tuple[dict[str, dict[str, Any]], list, list]:
    """Synthetic 8-channel MIMII-like data (two fan IDs), one bundle per model kind.

    The models only need their real shapes for latency; their quality on this data is reported in
    quick mode as a parity check, the real quality figures come from ToyCar.
    """
    from edge_asd.frontend import FeatureConfig
    from trainer.datasets import attribute_group, read_dataset
    from trainer.export import export_bundle
    from trainer.protocols import make_splits
    from trainer.synth import generate_dataset
    from trainer.train import TrainConfig, train

    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    n_normal, n_abnormal, duration = (8, 3, 3.0) if quick else (24, 8, 10.0)
    generate_dataset(data, machines=["fan"], ids=["00", "02"], snrs_db=[6.0], n_normal=n_normal, n_abnormal=n_abnormal,
                     channels=8, duration_s=duration, seed=seed)
    splits = make_splits(read_dataset(data, layout="mimii"), "mimii", seed=seed)
    train_clips = [c for s in splits for c in s.train]
    test_clips = [c for s in splits for c in s.test]
    features = FeatureConfig(kind="logmel", n_mels=64)
    models = {}
    for kind in KINDS:
        log(f"training {kind} for the benchmarks")
        labels = [attribute_group(c) for c in train_clips] if kind == "cnn-lstm" else None
        # Quick mode caps the training windows: one short epoch, the models only need their shapes.
        cfg = TrainConfig(model=kind, epochs=1 if quick else 3, seed=seed, batch_size=64,
                          max_train_windows=512 if quick else TrainConfig.max_train_windows)
        result = train([c.path for c in train_clips], features, cfg, labels=labels, cache_dir=work / "cache",
                       log=lambda s: None, progress=False)
        bundle = export_bundle(result, work / "bundles" / kind, provenance={"data_root": str(data), "protocol": "benchmark"})
        models[kind] = {"bundle": bundle.path, "keras": result.model}
    return models, train_clips, test_clips


def quick_parity(models: dict[str, dict[str, Any]], test_clips: list) -> list[dict[str, Any]]:
    """Float vs int8 AUC of each kind on the synthetic test clips (same harness as ``asd-train evaluate``)."""
    from edge_asd.scoring.bundle import read_bundle
    from trainer.evaluate import class_label_for, score_clips
    from trainer.metrics import auc, pauc

    y = np.array([c.is_anomaly for c in test_clips])
    rows = []
    for kind, m in models.items():
        bundle = read_bundle(m["bundle"])
        scores = score_clips(bundle, [c.path for c in test_clips], class_labels=[class_label_for(bundle, c) for c in test_clips],
                             models=("int8", "float"), progress=False)
        row = {"model": kind, "features": bundle.features.kind, "frames": frames_label(bundle.features.to_dict()), "auc_float": auc(y, scores["float"]), "auc_int8": auc(y, scores["int8"]),
               "pauc_float": pauc(y, scores["float"]), "pauc_int8": pauc(y, scores["int8"])}
        row["auc_int8_minus_float"] = row["auc_int8"] - row["auc_float"]
        row["int8_kb"] = (m["bundle"] / "model_int8.tflite").stat().st_size / 1024
        rows.append(row)
    return rows


def missing_figures(node: Any, path: str = "") -> list[str]:
    """Paths of figures that are absent or not finite numbers (``unavailable`` entries excepted:
    they carry their reason and are allowed only for tflite_runtime)."""
    out = []
    if isinstance(node, dict):
        if "unavailable" in node:
            return [] if "tflite_runtime" in path else [f"{path}: unavailable ({node['unavailable']})"]
        for key, value in node.items():
            out += missing_figures(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += missing_figures(value, f"{path}[{i}]")
    elif node is None or (isinstance(node, float) and not math.isfinite(node)):
        out.append(f"{path}: missing")
    return out


def to_markdown(r: dict[str, Any]) -> str:
    def ms(t: dict[str, Any]) -> str:
        return f"{t['median_ms']:.3f} / {t['p90_ms']:.3f}" if "median_ms" in t else "unavailable"

    m = r["machine"]
    parts = [
        f"Measured {r['date']} on `{m['host']}` ({m['cpu']}, nproc {m['nproc']}, Python {m['python']}) by "
        f"`{r['command']}`{' (quick mode: tiny data, for CI)' if r['quick'] else ''}.",
        "",
        "**Front end** (warm, one thread, median ms):",
        "",
    ]
    from benchmarks.frontend import to_markdown as frontend_md

    parts += [frontend_md(r["frontend"]), "", "**Inference**, per window, one thread, median / p90 ms:", ""]
    rows = []
    for kind, row in r["inference"].items():
        rows.append([kind, ms(row["litert_int8"]), ms(row["litert_float"]), ms(row["tflite_runtime_int8"]), ms(row["tflite_runtime_float"]),
                     ms(row["keras"]), row["int8_kb"], row["float_kb"]])
    parts += [markdown_table(["model", "LiteRT int8", "LiteRT float", "tflite_runtime int8", "tflite_runtime float", "Keras (TF)", "int8 KB", "float KB"], rows)]
    e = r["end_to_end"]
    parts += ["", "**End to end** (conv-ae, log-Mel, one core):", "",
              markdown_table(["pipeline", "audio s", "wall s", "real-time factor"], [
                  ["device: wav folder → streaming front end → int8 LiteRT → alarm → SQLite/stdout", e["device"]["audio_s"], e["device"]["wall_s"], f"{e['device']['real_time_factor']:.5f}"],
                  ["reference: librosa log-Mel + float Keras predict, clip by clip", e["reference"]["audio_s"], e["reference"]["wall_s"], f"{e['reference']['real_time_factor']:.5f}"],
              ]),
              "", f"Device pipeline is **{e['speedup']:.1f}×** faster than the reference.", "",
              f"**Memory**: peak RSS of `edge-asd run` {r['memory']['peak_rss_mb']:.0f} MB; device modules import in "
              f"{r['memory']['import_s']:.2f} s (TensorFlow imported: {r['memory']['imports_tensorflow']}).", ""]
    q = r["quality"]
    parts += [f"**Quality parity** ({q['source']}):", ""]
    parts += [markdown_table(["model", "features", "frames", "AUC float", "AUC int8", "int8 − float", "pAUC float", "pAUC int8", "int8 KB"],
                             [[x["model"], x["features"], x["frames"], x["auc_float"], x["auc_int8"], f"{x['auc_int8_minus_float']:+.4f}", x["pauc_float"], x["pauc_int8"], x["int8_kb"]]
                              for x in q["rows"]])]
    parts += ["", "**Goals**:", ""] + [f"- {line}" for line in r["goals"]]
    return "\n".join(parts)


def goals(r: dict[str, Any]) -> list[str]:
    g, e = GOALS, r["end_to_end"]
    rows = r["quality"]["rows"]
    worst_delta = max(abs(x["auc_int8_minus_float"]) for x in rows)
    biggest = max([v["int8_kb"] for v in r["inference"].values()] + [x["int8_kb"] for x in rows])

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return [
        f"end to end ≥ {g['e2e_speedup_min']:.0f}× the reference: {e['speedup']:.1f}× — {verdict(e['speedup'] >= g['e2e_speedup_min'])}",
        f"real-time factor ≤ {g['rtf_max']}: {e['device']['real_time_factor']:.5f} — {verdict(e['device']['real_time_factor'] <= g['rtf_max'])}",
        f"|int8 − float| AUC ≤ {g['int8_auc_delta_max']} for every model: worst {worst_delta:.4f} — {verdict(worst_delta <= g['int8_auc_delta_max'])}",
        f"every int8 model ≤ {g['int8_kb_max']:.0f} KB: largest {biggest:.1f} KB — {verdict(biggest <= g['int8_kb_max'])}",
        f"device peak RSS ≤ {g['rss_mb_max']:.0f} MB: {r['memory']['peak_rss_mb']:.0f} MB — {verdict(r['memory']['peak_rss_mb'] <= g['rss_mb_max'])}",
    ]


def update_readme(markdown: str) -> None:
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        raise SystemExit(f"{README}: markers {MARK_START} / {MARK_END} not found")
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    README.write_text(f"{head}{MARK_START}\n{markdown}\n{MARK_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and few repeats (seconds to a few minutes); for CI")
    parser.add_argument("--toycar-results", type=Path, help="use this benchmarks.toycar JSON for the quality table instead of training it here")
    parser.add_argument("--update-readme", action="store_true", help="rewrite docs/performance.md (the performance page) with this run")
    args = parser.parse_args(argv)
    if args.toycar_results is not None and not args.toycar_results.is_file():
        # Checked before minutes of measuring, not after them.
        parser.error(f"--toycar-results {args.toycar_results}: no such file (from the repository root the "
                     "finished ToyCar run is benchmarks/results/toycar.json)")
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + (f" --toycar-results {args.toycar_results}" if args.toycar_results else "")
    work = WORK / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from benchmarks import end_to_end, frontend, inference

    result: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": machine(), "command": command, "quick": args.quick}
    log("front end")
    result["frontend"] = frontend.run(repeats=5 if args.quick else 20)
    models, _, test_clips = make_models(work, quick=args.quick)
    log("inference latency")
    result["inference"] = inference.run(models, repeats=30 if args.quick else 200)
    log("end to end")
    folder = work / "data"
    clips = sorted(folder.rglob("*.wav"))[: 4 if args.quick else 12]
    e2e_folder = work / "e2e-clips"
    shutil.rmtree(e2e_folder, ignore_errors=True)
    e2e_folder.mkdir()
    for i, clip in enumerate(clips):
        shutil.copy(clip, e2e_folder / f"{i:03d}.wav")
    toml = end_to_end.device_toml(work, bundle=models["conv-ae"]["bundle"], folder=e2e_folder, channels=8)
    end_to_end.device_rtf(toml)  # warm: numba cache, interpreter
    device = end_to_end.device_rtf(toml)
    reference = end_to_end.reference_rtf(models["conv-ae"]["keras"], models["conv-ae"]["bundle"], sorted(e2e_folder.glob("*.wav")))
    result["end_to_end"] = {"device": device, "reference": reference, "speedup": reference["wall_s"] / device["wall_s"]}
    log("memory and import time")
    result["memory"] = {**end_to_end.device_process_memory(toml), **end_to_end.device_import_time()}
    if args.quick:
        result["quality"] = {"source": "quick mode: tiny synthetic fan set, one epoch — a parity check, not a quality figure",
                             "rows": quick_parity(models, test_clips)}
    else:
        if args.toycar_results:
            toycar = json.loads(args.toycar_results.read_text())
            source = f"DCASE 2023 ToyCar source test 50 + 50, from {args.toycar_results} (python -m benchmarks.toycar)"
        else:
            from benchmarks import toycar

            if not toycar.DATA.is_dir():
                raise SystemExit(f"{toycar.DATA} is absent: run with --quick, or give --toycar-results")
            toycar.run(list(KINDS), ["logmel", "ims"], 12, WORK / "toycar", [0])
            toycar = json.loads((RESULTS / "toycar.json").read_text())
            source = "DCASE 2023 ToyCar source test 50 + 50, trained in this run (seed 0, ≤ 12 epochs)"
        # The figures of each row; its feature config becomes one label, its per-clip scores stay in toycar.json.
        rows = [{**{k: v for k, v in row.items() if k not in ("feature_config", "int8_clip_scores")}, "frames": frames_label(row.get("feature_config"))}
                for row in toycar["rows"]]
        result["quality"] = {"source": source, "rows": rows}
    result["goals"] = goals(result)
    result["elapsed_s"] = time.perf_counter() - started
    missing = missing_figures({k: v for k, v in result.items() if k not in ("goals",)})
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date']}-{result['machine']['host']}" + ("-quick" if args.quick else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    markdown = to_markdown(result)
    (RESULTS / f"{stem}.md").write_text(markdown + "\n")
    print(markdown)
    if args.update_readme:
        update_readme(markdown)
    if missing:
        log("missing figures:\n  " + "\n  ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
