"""Front-end speed: our log-Mel and IMS against librosa and against the bare batched rfft floor.

    python -m benchmarks.frontend [--repeats 20]

Warm, one thread, median of ``--repeats`` runs, per clip. The floor is ``numpy.fft.rfft`` of the
already windowed frames: the one step no front end can skip.
"""

from __future__ import annotations

import argparse
import json

from benchmarks._common import clip_8ch_10s, clip_mono_12s, markdown_table, timeit

import numpy as np  # noqa: E402  (after the thread settings in _common)

from edge_asd.frontend import FeatureConfig, compute_features  # noqa: E402
from edge_asd.frontend.streaming import analysis_window  # noqa: E402


def bench_clip(samples: np.ndarray, *, repeats: int) -> dict[str, dict[str, float]]:
    """Time each front end on one clip ``(n_samples, n_channels)`` at 16 kHz; ms."""
    logmel = FeatureConfig(kind="logmel", n_mels=128)
    ims = FeatureConfig(kind="ims", n_mels=128, n_sinc=40)
    results = {
        "ours_logmel": timeit(lambda: compute_features(samples, logmel), repeats=repeats),
        "ours_ims": timeit(lambda: compute_features(samples, ims), repeats=repeats),
    }
    try:
        import librosa
    except ImportError:
        results["librosa_logmel"] = {"unavailable": "librosa is not installed (pip install 'edge-asd[dev]')"}
    else:
        def librosa_logmel() -> np.ndarray:
            y = librosa.to_mono(samples.T) if samples.shape[1] > 1 else samples[:, 0]
            mel = librosa.feature.melspectrogram(
                y=y, sr=16000, n_fft=1024, hop_length=512, n_mels=128, htk=False, norm="slaney", center=True, pad_mode="constant"
            )
            return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)

        results["librosa_logmel"] = timeit(librosa_logmel, repeats=repeats)
    mono = np.pad(samples.mean(axis=1), 512).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(mono, 1024)[::512] * analysis_window(logmel)
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    results["rfft_floor"] = timeit(lambda: np.fft.rfft(frames, axis=1), repeats=repeats)
    # scipy's pocketfft (what the front end uses) is faster than numpy's: a second, lower floor.
    import scipy.fft

    results["scipy_rfft_floor"] = timeit(lambda: scipy.fft.rfft(frames, axis=1, workers=1), repeats=repeats)
    return results


def ratios(results: dict[str, dict[str, float]]) -> dict[str, float | None]:
    ours = results["ours_logmel"]["median_ms"]
    lib = results["librosa_logmel"].get("median_ms")
    return {
        "librosa_over_ours_logmel": lib / ours if lib else None,
        "librosa_over_ours_ims": lib / results["ours_ims"]["median_ms"] if lib else None,
        "ours_logmel_over_rfft": ours / results["rfft_floor"]["median_ms"],
        "ours_ims_over_rfft": results["ours_ims"]["median_ms"] / results["rfft_floor"]["median_ms"],
        "ours_logmel_over_scipy_rfft": ours / results["scipy_rfft_floor"]["median_ms"],
    }


def run(*, repeats: int = 20) -> dict:
    """Both clips; returns ``{clip label: {"times": ..., "ratios": ...}}``."""
    out = {}
    for samples, label in (clip_8ch_10s(), clip_mono_12s()):
        compute_features(samples[:4096], FeatureConfig(kind="ims"))  # numba compile / cache load
        times = bench_clip(samples, repeats=repeats)
        out[label] = {"times": times, "ratios": ratios(times)}
    return out


def to_markdown(result: dict) -> str:
    rows = []
    for label, r in result.items():
        t, q = r["times"], r["ratios"]
        lib = t["librosa_logmel"].get("median_ms", float("nan"))
        rows.append([label, t["ours_logmel"]["median_ms"], t["ours_ims"]["median_ms"], lib, t["rfft_floor"]["median_ms"],
                     t["scipy_rfft_floor"]["median_ms"], q["librosa_over_ours_logmel"] or float("nan"),
                     q["ours_logmel_over_rfft"], q["ours_ims_over_rfft"], q["ours_logmel_over_scipy_rfft"]])
    return markdown_table(
        ["clip", "ours log-Mel ms", "ours IMS ms", "librosa log-Mel ms", "numpy rfft floor ms", "scipy rfft floor ms",
         "librosa / ours", "ours / numpy rfft", "IMS / numpy rfft", "ours / scipy rfft"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args()
    result = run(repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else to_markdown(result))


if __name__ == "__main__":
    main()
