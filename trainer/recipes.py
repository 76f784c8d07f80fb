"""Recipes: named, measured training settings (front end + model + training), the product's knowledge
of what trains well.

A recipe fixes everything ``asd-train fit`` needs besides the data: the feature config, the model
kind and its window, the normalisation, the batch size and the number of epochs. Every command-line
flag of ``asd-train fit`` overrides the recipe's value. The benchmarks import their settings from
here (``benchmarks/toycar.py``), never the other way round, so the default a user gets is the setting
that was measured best.

Where each was measured: DCASE 2023 Task 2 ToyCar (section 00, ``../shared/data``), int8 model
through the device runtime, source-domain test 50 + 50 clips, ``python -m benchmarks.toycar``
(one run, ``benchmarks/results/toycar.md``) and ``--seeds 0,1,2`` (``results/toycar_seeds.md``).
Those frames were chosen on that test set (it has no labelled validation set); ``--recipe auto``
chooses among the recipes on *synthetic* faults made from held-out normal clips instead
(:mod:`trainer.select`), an honest choice in principle, but on ToyCar that ranking ran opposite to
the real faults' (``benchmarks/results/toycar_auto.md``, ``toycar_auto_groups.md``), so it stays
experimental and the default is the measured best.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edge_asd.errors import ParameterError
from edge_asd.frontend import FeatureConfig
from trainer.models import CLASSIFIER_KINDS, EMBEDDING_KINDS, MODEL_KINDS

__all__ = ["Recipe", "RECIPES", "DEFAULT_RECIPE", "AUTO", "AUTO_CANDIDATES", "get_recipe", "recipe_for_model"]

AUTO = "auto"
"""``--recipe auto``: train every recipe of :data:`AUTO_CANDIDATES`, keep the one that best separates
held-out normal clips from synthetic faults made from them."""


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """One named set of training settings.

    Frame parameters follow librosa's names and are in samples at ``sr``; ``train_hop_s`` is in
    seconds so that a recipe gives about the same number of training windows at any frame hop.
    """

    name: str
    summary: str
    """One line: what the recipe is for."""
    measured: str
    """Where and how it was measured (empty: not measured)."""
    model: str
    features: str = "logmel"
    """``logmel`` or ``ims``."""
    sr: int = 16000
    """Sample rate the model works at, Hz (clips at other rates are resampled)."""
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64
    n_sinc: int = 24
    """Sinc bands for IMS (24 keep dense-ae's 5-frame IMS input under 256 KB of int8 model at 64 mels)."""
    normalization: str = "global"
    n_frames: int | None = None
    """Frames per window (``None``: the model kind's default)."""
    hop_frames: int | None = None
    batch_size: int = 128
    dropout: float = 0.0
    epochs: int = 12
    """Maximum epochs (early stopping on the validation loss usually ends sooner)."""
    train_hop_s: float | None = 0.032
    """Seconds between training windows (``None``: a quarter of the scoring hop)."""
    needs_classes: bool = False
    """The model learns classes (machine IDs / attributes): not for a folder of one machine."""
    backend: str = "none"
    """The scoring back end it exports with (``asd-train fit --backend`` overrides it): ``none`` for a
    model that scores itself; an embedding model needs one."""
    research: bool = False
    """Measured not to work (chance on ToyCar): kept as a research record and for the model kinds the
    trainer offers, listed only by ``asd-train recipes --research``, and ``fit`` says so when used."""

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ParameterError(f"recipe {self.name}: model must be one of {MODEL_KINDS}, got {self.model!r}")
        if self.model in EMBEDDING_KINDS and self.backend == "none":
            raise ParameterError(f"recipe {self.name}: a {self.model} gives embeddings and needs a scoring back end")
        self.feature_config()  # validates the frame settings once, here

    def feature_config(self) -> FeatureConfig:
        """The front end's configuration. IMS sinc filters shrink to ``n_fft - 1`` taps for a short FFT."""
        sinc_length = min(FeatureConfig.sinc_length, self.n_fft - 1)  # n_fft is even (FeatureConfig checks)
        return FeatureConfig(
            kind=self.features, sr=self.sr, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels,
            n_sinc=self.n_sinc, sinc_length=sinc_length,
        )

    def train_config(self, *, seed: int = 0, epochs: int | None = None, objective: str | None = None):
        """The :class:`trainer.train.TrainConfig` (imported here: it loads Keras)."""
        from trainer.train import TrainConfig

        train_hop = None if self.train_hop_s is None else max(1, round(self.train_hop_s * self.sr / self.hop_length))
        return TrainConfig(
            model=self.model, objective=objective, epochs=epochs or self.epochs, seed=seed,
            normalization=self.normalization, n_frames=self.n_frames, hop_frames=self.hop_frames,
            batch_size=self.batch_size, dropout=self.dropout, train_hop_frames=train_hop,
        )

    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with command-line overrides (``None`` values are ignored).

        Overriding the model drops the recipe's model-specific settings (window, batch size,
        dropout) for that kind's defaults: an 8-frame conv-ae window means nothing to an LSTM.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        if "model" in given and given["model"] != self.model:
            defaults = {f.name: f.default for f in dataclasses.fields(Recipe)}
            for key in ("n_frames", "hop_frames", "batch_size", "dropout"):
                given.setdefault(key, defaults[key])
            given.setdefault("needs_classes", given["model"] in CLASSIFIER_KINDS)
            given.setdefault("backend", "knn" if given["model"] in EMBEDDING_KINDS else defaults["backend"])
        return dataclasses.replace(self, **given) if given else self

    def settings(self) -> dict[str, object]:
        """What the recipe sets, for ``asd-train recipes`` and the bundle's provenance."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "summary", "measured", "research")}


_SHORT = {"n_fft": 128, "hop_length": 64, "n_mels": 16}
"""Short frames: 8 ms FFTs every 4 ms, 16 mel bands. Clicks and knocks (ToyCar's chipped gear, bent
shaft, damaged tyre) are smeared over the running noise by a 64 ms FFT and resolved by an 8 ms one."""

_RECIPES = (
    Recipe(
        name="short-conv-ae",
        summary="conv autoencoder on 8 ms frames, 32 ms windows: machines whose faults click or knock",
        measured="ToyCar source test, int8: AUC 0.783 (one run), 0.770 ± 0.018 over seeds 0-2",
        model="conv-ae", **_SHORT, n_frames=8, hop_frames=4, batch_size=64,
    ),
    Recipe(
        name="short-dense-ae",
        summary="the DCASE dense autoencoder on 8 ms frames: level with short-conv-ae, trains 7x faster",
        measured="ToyCar source test, int8: AUC 0.770 (one run), 0.764 ± 0.006 over seeds 0-2",
        model="dense-ae", **_SHORT, batch_size=512,
    ),
    Recipe(
        name="short-lstm-ae",
        summary="LSTM autoencoder on 8 ms frames",
        measured="ToyCar source test, int8: AUC 0.734 (one run), 0.732 ± 0.004 over seeds 0-2",
        model="lstm-ae", **_SHORT, batch_size=64,
    ),
    Recipe(
        name="mid-dense-ae",
        summary="the DCASE dense autoencoder on 16 ms FFTs every 8 ms, 64 mel bands: between short and DCASE frames",
        measured="ToyCar source test, float dense-ae at these frames (scratch study in benchmarks/toycar.py): "
        "AUC 0.688 / 0.698 / 0.678 over seeds 0-2",
        model="dense-ae", n_fft=256, hop_length=128, n_mels=64, batch_size=512,
    ),
    Recipe(
        name="dcase-reference",
        summary="the DCASE 2020-2024 / MLPerf Tiny reference system: dense autoencoder on 64 ms FFTs every 32 ms",
        measured="ToyCar source test, int8: AUC 0.619 (one run), 0.629 ± 0.024 over seeds 0-2",
        model="dense-ae", n_fft=1024, hop_length=512, n_mels=64, batch_size=512,
    ),
    Recipe(
        name="short-cnn-lstm",
        summary="self-supervised CNN-LSTM classifier of machine IDs / attributes (data sets with several classes)",
        measured="ToyCar source test, int8: AUC 0.525 (near chance: one run)",
        model="cnn-lstm", **_SHORT, batch_size=64, dropout=0.2, epochs=10, needs_classes=True, research=True,
    ),
    Recipe(
        name="mfn-arcface",
        summary="MobileFaceNet-style embedding of machine IDs / attributes (ArcFace), scored by k-NN with factory and "
                "site banks (data sets with several classes)",
        measured="ToyCar source test, int8 + k-NN: AUC 0.476 ± 0.014 over seeds 0-1 (chance; benchmarks/results/toycar_domain_mfn-arcface.md)",
        model="mobilefacenet", n_fft=1024, hop_length=512, n_mels=64, normalization="per-feature",
        n_frames=64, hop_frames=32, batch_size=64, epochs=20, train_hop_s=0.256, needs_classes=True, backend="knn",
        research=True,
    ),
)
RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}
"""Every recipe by name, best measured first."""

DEFAULT_RECIPE = "short-conv-ae"
"""The best measured recipe (highest mean int8 AUC over seeds on ToyCar)."""

AUTO_CANDIDATES: tuple[str, ...] = tuple(r.name for r in _RECIPES if not r.needs_classes)
"""What ``--recipe auto`` trains and ranks: every recipe a folder of one machine can train."""


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a :class:`ParameterError` lists the names otherwise."""
    if name not in RECIPES:
        raise ParameterError(f"no recipe {name!r}; choose one of {', '.join(RECIPES)} or {AUTO!r} (asd-train recipes)")
    return RECIPES[name]


def recipe_for_model(kind: str) -> Recipe:
    """The short-frame recipe of a model kind (what the ToyCar benchmark trains for that kind)."""
    found = next((r for r in _RECIPES if r.model == kind and r.n_fft == _SHORT["n_fft"]), None)
    if found is None:
        raise ParameterError(f"no short-frame recipe for model kind {kind!r}")
    return found
