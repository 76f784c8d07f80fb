"""``asd-train fit`` and ``asd-train evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import click

from edge_asd.errors import ParameterError
from edge_asd.frontend import FeatureConfig
from trainer import quiet_tensorflow_logs

__all__ = ["fit", "evaluate", "select_split", "fit_bundle"]

LAYOUT_CHOICES = ["auto", "mimii", "dcase2020", "dcase", "folder"]
PROTOCOL_CHOICES = ["mimii", "dcase", "supervised-8020", "holdout-n"]


def select_split(
    root: Path,
    *,
    layout: str = "auto",
    machine: Sequence[str] = (),
    ids: Sequence[str] = (),
    snr: Sequence[float] = (),
    protocol: str = "dcase",
    seed: int = 0,
    n: int | None = None,
) -> tuple[list[Any], list[Any], str]:
    """Read a data set, filter it and apply a protocol: ``(train clips, test clips, description)``.

    Several groups (e.g. MIMII IDs) are merged into one training set: one model for all of them
    (the ``id`` objective needs that; for an autoencoder it is one model per selection).
    """
    from trainer.datasets import filter_clips, read_dataset
    from trainer.protocols import make_splits

    clips = read_dataset(root, layout=layout)
    clips = filter_clips(clips, machine=list(machine) or None, ids=list(ids) or None, snr_db=list(snr) or None)
    if not clips:
        raise ParameterError(f"{root}: no clips match machine={list(machine)} id={list(ids)} snr={list(snr)}")
    splits = make_splits(clips, protocol, seed=seed, n=n)
    train = sorted({c for s in splits for c in s.train}, key=lambda c: str(c.path))
    test = sorted({c for s in splits for c in s.test}, key=lambda c: str(c.path))
    return train, test, "; ".join(s.name for s in splits)


def fit_bundle(
    root: Path,
    out: Path,
    *,
    layout: str = "auto",
    machine: Sequence[str] = (),
    ids: Sequence[str] = (),
    snr: Sequence[float] = (),
    model: str = "conv-ae",
    objective: str | None = None,
    features: FeatureConfig | None = None,
    protocol: str = "dcase",
    epochs: int = 20,
    seed: int = 0,
    normalization: str = "per-feature",
    run_evaluation: bool = True,
    false_alarms_per_day: float = 1.0,
    cache_dir: Path | None = None,
    log=click.echo,
) -> dict[str, Any]:
    """Train, export and (by default) evaluate; the library form of ``asd-train fit``.

    Returns ``{"bundle": Path, "test_clips": [Clip], "evaluation": summary or None}``.
    """
    from trainer.datasets import attribute_group
    from trainer.evaluate import evaluate_clips
    from trainer.export import export_bundle
    from trainer.train import TrainConfig, train

    features = features or FeatureConfig()
    train_clips, test_clips, split_name = select_split(
        root, layout=layout, machine=machine, ids=ids, snr=snr, protocol=protocol, seed=seed
    )
    config = TrainConfig(model=model, objective=objective, epochs=epochs, seed=seed, normalization=normalization)
    obj = config.resolved_objective
    if obj == "supervised" and protocol != "supervised-8020":
        raise ParameterError("the supervised objective needs --protocol supervised-8020 (it trains on anomalies)")
    if obj == "reconstruction" or obj == "id":
        train_clips = [c for c in train_clips if c.label == "normal"]
    labels = None
    if obj == "id":
        labels = [attribute_group(c) for c in train_clips]
    elif obj == "supervised":
        labels = [c.label for c in train_clips]
    log(f"{split_name}: {len(train_clips)} training clips, {len(test_clips)} test clips")
    result = train([c.path for c in train_clips], features, config, labels=labels, cache_dir=cache_dir, log=log)
    bundle = export_bundle(
        result,
        out,
        false_alarms_per_day=false_alarms_per_day,
        provenance={
            "data_root": str(Path(root).resolve()),
            "layout": layout,
            "protocol": protocol,
            "split": split_name,
            "selection": {"machine": list(machine), "id": list(ids), "snr_db": list(snr)},
        },
    )
    log(f"bundle written: {bundle.path} (int8 {bundle.model_path('int8').stat().st_size / 1024:.1f} KB)")
    summary = None
    if run_evaluation and test_clips:
        summary = evaluate_clips(
            bundle.path, test_clips, out / "report", title=f"{model} {features.kind} {split_name}",
            protocol=protocol, keras_model=result.model, cache_dir=cache_dir,
        )
    return {"bundle": bundle.path, "test_clips": test_clips, "evaluation": summary, "train_result": result}


def cli_features(kind: str, *, n_mels: int, n_fft: int, hop_length: int) -> FeatureConfig:
    """The feature config ``asd-train fit`` trains with.

    The sinc filters of IMS are as long as seed 000's (251 taps) where the FFT holds them, and one
    tap shorter than the FFT otherwise, so a short ``n_fft`` needs no extra option.
    """
    sinc_length = min(FeatureConfig.sinc_length, n_fft - 1)  # n_fft is even (FeatureConfig checks)
    return FeatureConfig(kind=kind, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length, sinc_length=sinc_length)


def _common(f):
    f = click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default="auto", show_default=True)(f)
    f = click.option("--machine", multiple=True, help="Machine type(s), e.g. fan (repeatable).")(f)
    f = click.option("--id", "ids", multiple=True, help="Machine ID(s) / section(s), e.g. 00 (repeatable).")(f)
    f = click.option("--snr", type=float, multiple=True, help="MIMII SNR(s) in dB (repeatable).")(f)
    f = click.option("--protocol", type=click.Choice(PROTOCOL_CHOICES), default=None, help="Evaluation protocol (default: mimii for MIMII data, else dcase).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    return f


def _default_protocol(root: Path, layout: str) -> str:
    from trainer.datasets import detect_layout

    found = detect_layout(root) if layout == "auto" else layout
    return "mimii" if found == "mimii" else ("supervised-8020" if found == "folder" else "dcase")


@click.command("fit")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_common
@click.option("--model", type=click.Choice(["dense-ae", "conv-ae", "lstm-ae", "cnn-lstm"]), default="conv-ae", show_default=True)
@click.option("--objective", type=click.Choice(["id", "supervised"]), default=None, help="cnn-lstm only (default id).")
@click.option("--features", "feature_kind", type=click.Choice(["logmel", "ims"]), default="logmel", show_default=True)
@click.option("--n-mels", type=int, default=64, show_default=True)
@click.option("--n-fft", type=int, default=1024, show_default=True, help="FFT length, samples.")
@click.option("--hop-length", type=int, default=512, show_default=True,
              help="Samples between frames. Short frames (--n-fft 128 --hop-length 64) resolve the clicks of a "
                   "damaged gear or wheel: on ToyCar they score far above the DCASE 1024/512 (benchmarks/toycar.py).")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--normalization", type=click.Choice(["per-feature", "global"]), default="per-feature", show_default=True,
              help="Standardise each band, or centre each band and use one common scale (the DCASE baseline's raw dB; "
                   "better on ToyCar, see benchmarks/toycar.py).")
@click.option("--false-alarms-per-day", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="Target false alarms per day of the exported threshold (fitted on the validation normal clips, as edge-asd calibrate does).")
@click.option("--evaluate/--no-evaluate", "run_evaluation", default=True, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Feature cache (default ~/.cache/edge-asd/features).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Bundle directory to write.")
def fit(data_root: Path, layout, machine, ids, snr, protocol, seed, model, objective, feature_kind, n_mels, n_fft, hop_length, epochs,
        normalization, false_alarms_per_day, run_evaluation, cache_dir, out) -> None:
    """Train a model on normal sound in DATA_ROOT, export a bundle to --out, evaluate it."""
    quiet_tensorflow_logs()
    features = cli_features(feature_kind, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)  # before any data is read
    protocol = protocol or _default_protocol(data_root, layout)
    res = fit_bundle(
        data_root, out, layout=layout, machine=machine, ids=ids, snr=snr, model=model, objective=objective,
        features=features, protocol=protocol, epochs=epochs, seed=seed,
        normalization=normalization, run_evaluation=run_evaluation, false_alarms_per_day=false_alarms_per_day, cache_dir=cache_dir,
    )
    if res["evaluation"]:
        from trainer.evaluate import markdown_summary

        click.echo(markdown_summary(res["evaluation"]))


@click.command("evaluate")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_common
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Report folder (default BUNDLE/report).")
@click.option("--no-store", is_flag=True, help="Do not write the metrics into bundle.json.")
def evaluate(bundle: Path, data_root: Path, layout, machine, ids, snr, protocol, seed, out, no_store) -> None:
    """Score DATA_ROOT's test clips with BUNDLE's int8 and float models (device runtime)."""
    from edge_asd.bundle import read_bundle
    from trainer.evaluate import evaluate_clips, markdown_summary

    b = read_bundle(bundle)
    protocol = protocol or b.provenance.get("protocol") or _default_protocol(data_root, layout)
    _, test, name = select_split(data_root, layout=layout, machine=machine, ids=ids, snr=snr, protocol=protocol, seed=seed)
    summary = evaluate_clips(bundle, test, out or bundle / "report", title=f"{b.model.kind} {name}", protocol=protocol, store_in_bundle=not no_store)
    click.echo(markdown_summary(summary))
    click.echo(json.dumps({k: summary[k] for k in ("auc_int8", "auc_float", "auc_int8_minus_float")}))
