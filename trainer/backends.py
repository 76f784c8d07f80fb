"""Fit scoring back ends with scikit-learn and convert them to the device's numpy form.

The device scores with :mod:`edge_asd.scoring.backends` (numpy only); this module fits the same models
with scikit-learn on the desktop, from the error vectors of normal training windows
(:meth:`edge_asd.scoring.detector.Detector.window_vectors`, the int8 model: the model the device runs),
and keeps the fitted scikit-learn estimators beside the numpy back end, so that
:meth:`FittedBackend.reference_score` gives scikit-learn's own scores for a parity check.

Hyper-parameters are chosen without any anomalous clip and never on a test set:

- ``mahalanobis`` / ``selective-mahalanobis``: covariance shrinkage from :data:`SHRINKAGE_GRID`
  plus Ledoit-Wolf's analytic value, the one giving the held-out (validation) normal vectors the
  highest Gaussian log-likelihood; Ledoit-Wolf's value when there is no validation set;
- ``gmm``: number of components from :data:`GMM_COMPONENTS` by the same held-out log-likelihood
  (BIC on the training vectors without validation), full covariances;
- ``knn``: ``k`` = :data:`DEFAULT_K`, a random bank of :data:`FACTORY_BANK_SIZE` training vectors;
- ``ocsvm``: ``nu`` = :data:`DEFAULT_NU`, ``gamma`` = :data:`DEFAULT_GAMMA_FACTOR` times
  scikit-learn's ``"scale"`` (1 / (d · var)), fitted on a random :data:`OCSVM_MAX_FIT` training
  vectors (libsvm is quadratic in them).

The fixed values (``k``, ``nu``, the gamma factor) and :data:`DEFAULT_REPRESENTATION` are the ones
``python -m benchmarks.backends`` chose on ToyCar's *validation* data (held-out normal clips against
synthetic faults, best mean over seeds 0-2; ``benchmarks/results/backends.md``). ``params``
overrides any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edge_asd.scoring.backends import (
    BACKEND_KINDS, SITE_BANK_SIZE, Backend, GmmBackend, KnnBackend, MahalanobisBackend, OcsvmBackend,
    SelectiveMahalanobisBackend, subsample,
)
from edge_asd.errors import ParameterError

__all__ = [
    "BACKEND_CHOICES", "DEFAULT_REPRESENTATION", "FACTORY_BANK_SIZE", "DEFAULT_K", "DEFAULT_NU", "DEFAULT_GAMMA_FACTOR",
    "SHRINKAGE_GRID",
    "GMM_COMPONENTS", "FittedBackend", "fit_backend", "clip_vectors", "has_site_slot",
]

BACKEND_CHOICES = ("none", *BACKEND_KINDS)
"""``asd-train fit --backend`` values; ``none`` keeps the model's own window score."""
DEFAULT_REPRESENTATION = "band_mse"
"""What the back ends score: the per-band reconstruction error (:mod:`edge_asd.scoring.backends`). On ToyCar's
validation data it beat its logarithm for every back end and seed (pseudo-AUC 0.70-0.74 against
0.68-0.70, ``benchmarks/results/backends.md``): the large errors a fault causes in a few bands
weigh more on the linear scale."""
FACTORY_BANK_SIZE = 1024
"""Training vectors kept in a k-NN factory bank (random, by the seed): the device computes the
distance to each of them for every window, so the bank's size is set by the cost budget
(:data:`edge_asd.scoring.backends.SITE_BANK_SIZE`; cost in ``benchmarks/results/backends.md``)."""
DEFAULT_K = 1
"""k = 1, 4, 16 were within 0.004 pseudo-AUC on ToyCar's validation data, k = 1 ahead for every seed."""
DEFAULT_NU = 0.2
"""One-class SVM's bound on the fraction of training vectors outside the boundary."""
DEFAULT_GAMMA_FACTOR = 0.3
"""The RBF gamma as a multiple of scikit-learn's ``"scale"`` (1 / (d · var of the vectors)): a wider
kernel than ``"scale"``; with ``nu`` 0.2 the best of 9 pairs on ToyCar's validation data."""
OCSVM_MAX_FIT = 4096
GMM_MAX_FIT = 50_000
"""Training vectors a GMM is fitted on at most (a random subset; EM's cost is linear in them)."""
SHRINKAGE_GRID = (0.0, 1e-3, 1e-2, 0.1, 0.3)
GMM_COMPONENTS = (1, 2, 4, 8, 16)


def has_site_slot(kind: str) -> bool:
    """Whether ``kind`` keeps a second domain (a k-NN site bank, selective Mahalanobis' target)."""
    return kind in ("knn", "selective-mahalanobis")


@dataclass(kw_only=True)
class FittedBackend:
    """A numpy back end and the scikit-learn estimators it was converted from."""

    backend: Backend
    estimators: dict[str, Any]
    """``{"factory": estimator}`` plus ``"site"`` for a second domain (fitted with scikit-learn on
    the same vectors, for :meth:`reference_score`)."""
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def reference_score(self, vectors: np.ndarray) -> np.ndarray:
        """scikit-learn's scores of ``vectors``, in the back end's convention (higher = more anomalous)."""
        x = np.asarray(vectors, dtype=np.float64)
        kind = self.backend.kind
        scores = []
        for est in self.estimators.values():
            if kind == "knn":
                scores.append(est.kneighbors(x)[0].mean(axis=1))
            elif kind in ("mahalanobis", "selective-mahalanobis"):
                scores.append(est.mahalanobis(x))
            elif kind == "gmm":
                scores.append(-est.score_samples(x))
            else:
                scores.append(-est.decision_function(x))
        return np.minimum.reduce(scores)


def _check(vectors: Any, name: str, dim: int | None = None, min_rows: int = 2) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < min_rows or not np.isfinite(x).all():
        raise ParameterError(f"{name}: need at least {min_rows} finite vectors as an (n, d) array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ParameterError(f"{name}: vectors have {x.shape[1]} dims, the training vectors {dim}")
    return x


def _shrinkage(train: np.ndarray, val: np.ndarray | None, params: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
    from sklearn.covariance import LedoitWolf, ShrunkCovariance

    if "shrinkage" in params:
        return float(params["shrinkage"]), {"shrinkage_chosen_by": "given"}
    lw = float(LedoitWolf().fit(train).shrinkage_)
    if val is None:
        return lw, {"shrinkage_chosen_by": "Ledoit-Wolf (no validation vectors)"}
    grid = sorted(set(SHRINKAGE_GRID) | {lw})
    ll = {a: float(ShrunkCovariance(shrinkage=a).fit(train).score(val)) for a in grid}
    best = max(grid, key=lambda a: ll[a])
    return best, {"shrinkage_chosen_by": "highest mean log-likelihood of the validation normal vectors",
                  "validation_log_likelihood": {f"{a:.4g}": round(v, 4) for a, v in ll.items()}}


def fit_backend(
    kind: str,
    train: np.ndarray,
    *,
    val: np.ndarray | None = None,
    target: np.ndarray | None = None,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> FittedBackend:
    """Fit a back end on normal vectors.

    Parameters
    ----------
    kind
        One of :data:`edge_asd.scoring.backends.BACKEND_KINDS`.
    train
        ``(n, d)`` vectors of normal training windows (the factory / source domain).
    val
        Vectors of held-out normal windows, to choose shrinkage / components by likelihood.
    target
        Vectors of a second domain (``knn``: the site bank, ``selective-mahalanobis``: the target
        statistics), e.g. DCASE's target-domain training clips. Ignored by the other kinds.
    params
        Overrides: ``k``, ``bank_size``, ``shrinkage``, ``n_components``, ``covariance_type``,
        ``nu``, ``gamma`` (a number or ``"scale"``) or ``gamma_factor``.
    """
    if kind not in BACKEND_KINDS:
        raise ParameterError(f"unknown back end {kind!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    from threadpoolctl import threadpool_limits

    # One BLAS / OpenMP thread: these fits are small matrix work, and on a 2-core machine the
    # default thread pools made a 16-component GMM fit 20x slower (17 s against 0.7 s).
    with threadpool_limits(limits=1):
        return _fit(kind, train, val=val, target=target, seed=seed, params=dict(params or {}))


def _fit(kind: str, train: np.ndarray, *, val: np.ndarray | None, target: np.ndarray | None, seed: int,
         params: dict[str, Any]) -> FittedBackend:
    x = _check(train, "training vectors")
    d = x.shape[1]
    v = None if val is None or len(val) < 2 else _check(val, "validation vectors", d)
    t = None if target is None or len(target) == 0 else _check(target, "target vectors", d)
    info: dict[str, Any] = {"n_train_vectors": len(x), "n_validation_vectors": 0 if v is None else len(v),
                            "n_target_vectors": 0 if t is None or not has_site_slot(kind) else len(t), "seed": seed}
    if kind == "knn":
        from sklearn.neighbors import NearestNeighbors

        k = int(params.get("k", DEFAULT_K))
        bank = subsample(x, int(params.get("bank_size", FACTORY_BANK_SIZE)), seed=seed)
        if not 1 <= k <= len(bank):
            raise ParameterError(f"k = {k} must be between 1 and the bank's {len(bank)} vectors")
        backend: Backend = KnnBackend(factory_bank=bank, site_bank=None, k=k)
        estimators = {"factory": NearestNeighbors(n_neighbors=k).fit(bank)}
        if t is not None:
            backend = backend.with_site(t)
            estimators["site"] = NearestNeighbors(n_neighbors=min(k, len(backend.site_bank))).fit(backend.site_bank)
        info.update(k=k, factory_bank=len(bank), site_bank=None if t is None else len(backend.site_bank),
                    bank="random subset of the training vectors", site_bank_size_max=SITE_BANK_SIZE)
    elif kind in ("mahalanobis", "selective-mahalanobis"):
        from sklearn.covariance import ShrunkCovariance

        alpha, how = _shrinkage(x, v, params)
        est = ShrunkCovariance(shrinkage=alpha).fit(x)
        info.update(shrinkage=alpha, **how)
        estimators = {"factory": est}
        if kind == "mahalanobis":
            backend = MahalanobisBackend(mean=est.location_.copy(), precision=est.precision_.copy())
        else:
            backend = SelectiveMahalanobisBackend(source_mean=est.location_.copy(), source_precision=est.precision_.copy(),
                                                  target_mean=None, target_precision=None, shrinkage=alpha)
            if t is not None:
                backend = backend.with_site(t)
                estimators["site"] = ShrunkCovariance(shrinkage=alpha).fit(t)
    elif kind == "gmm":
        from sklearn.mixture import GaussianMixture

        fit_x = subsample(x, GMM_MAX_FIT, seed=seed)
        cov = str(params.get("covariance_type", "full"))

        def gmm(n: int) -> Any:
            return GaussianMixture(n_components=n, covariance_type=cov, random_state=seed, max_iter=200, reg_covar=1e-6).fit(fit_x)

        if "n_components" in params:
            est = gmm(int(params["n_components"]))
            info["n_components_chosen_by"] = "given"
        else:
            fitted = {n: gmm(n) for n in GMM_COMPONENTS if n <= len(fit_x) // 2}
            if v is not None:
                crit = {n: float(g.score(v)) for n, g in fitted.items()}
                best = max(crit, key=lambda n: crit[n])
                info.update(n_components_chosen_by="highest mean log-likelihood of the validation normal vectors",
                            validation_log_likelihood={str(n): round(c, 4) for n, c in crit.items()})
            else:
                crit = {n: float(g.bic(fit_x)) for n, g in fitted.items()}
                best = min(crit, key=lambda n: crit[n])
                info.update(n_components_chosen_by="lowest BIC on the training vectors (no validation vectors)")
            est = fitted[best]
        info.update(n_components=int(est.n_components), covariance_type=cov, n_fit_vectors=len(fit_x), converged=bool(est.converged_))
        backend = GmmBackend(weights=est.weights_.copy(), means=est.means_.copy(),
                             precisions_cholesky=est.precisions_cholesky_.copy(), covariance_type=cov)
        estimators = {"factory": est}
    else:  # ocsvm
        from sklearn.svm import OneClassSVM

        fit_x = subsample(x, int(params.get("max_fit", OCSVM_MAX_FIT)), seed=seed)
        nu = float(params.get("nu", DEFAULT_NU))
        if "gamma" in params:
            gamma, rule = params["gamma"], str(params["gamma"]) if isinstance(params["gamma"], str) else "given"
        else:
            factor = float(params.get("gamma_factor", DEFAULT_GAMMA_FACTOR))
            gamma, rule = factor / (fit_x.shape[1] * fit_x.var()), f"{factor:g} x scikit-learn's 'scale' (1 / (d var))"
        est = OneClassSVM(kernel="rbf", nu=nu, gamma=gamma).fit(fit_x)
        info.update(nu=nu, gamma=float(est._gamma), gamma_rule=rule,  # noqa: SLF001
                    n_fit_vectors=len(fit_x), n_support_vectors=len(est.support_vectors_))
        backend = OcsvmBackend(support_vectors=est.support_vectors_.copy(), dual_coef=est.dual_coef_[0].copy(),
                               intercept=float(est.intercept_[0]), gamma=float(est._gamma))  # noqa: SLF001
        estimators = {"factory": est}
    return FittedBackend(backend=backend, estimators=estimators, fitted_on=info)


def clip_vectors(
    detector: Any,
    paths: Sequence[Path],
    *,
    representation: str,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[np.ndarray]:
    """Each clip's window vectors (``(n_windows, d)``) through ``detector`` (its model and
    normalisation; its back end is not used), features from the trainer's cache."""
    from trainer.features_cache import clip_features

    out = []
    for i, path in enumerate(paths):
        frames = clip_features(Path(path), detector.config, cache_dir=cache_dir)
        out.append(detector.window_vectors(frames, representation=representation))
        if (i + 1) % 50 == 0:
            log(f"  error vectors of {i + 1}/{len(paths)} clips")
    return out


def describe_fit(fitted: FittedBackend, *, representation: str, clips: Mapping[str, int]) -> dict[str, Any]:
    """The ``fitted_on`` record of a bundle's back end."""
    return {"representation": representation, "model": "int8", "clips": dict(clips), **fitted.fitted_on}



__all__ += ["describe_fit"]
