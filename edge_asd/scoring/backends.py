"""Scoring back ends over a model's representation, in numpy only.

A back end replaces an autoencoder's window score (the mean squared reconstruction error) by a
score computed on the window's *error vector*: the squared reconstruction error of each feature
(mel / sinc band), averaged over the window's frames (:func:`band_errors`); and it is the *only*
score of an embedding model (``mobilefacenet``), whose window vector is its unit-length embedding
(representation ``embedding``). The back ends are
fitted on the desktop with scikit-learn (``trainer.backends``), stored in the bundle as plain
arrays (``.npz``, loaded with ``allow_pickle=False``) and scored here, on the device, without
scikit-learn or TensorFlow. Every score is *higher = more anomalous*, as the detector's:

================================  =============================================================
kind                              window score of a vector ``x``
================================  =============================================================
``knn``                           mean Euclidean distance to the ``k`` nearest vectors of the
                                  factory bank; with a site bank, the smaller of that and the
                                  same distance to the site bank (each domain judged by its own
                                  normal sound)
``mahalanobis``                   squared Mahalanobis distance ``(x − μ)ᵀ P (x − μ)``
``selective-mahalanobis``         DCASE 2023's selective Mahalanobis: the smaller of the squared
                                  distances under the source (factory) statistics and the target
                                  (site) statistics
``gmm``                           negative log-likelihood under a Gaussian mixture
``ocsvm``                         negated one-class SVM decision value (RBF kernel)
================================  =============================================================

Why the error per band, averaged over the window's frames: its mean over the bands *is* the
model's own score (so a back end generalises it: the raw score is one linear read-out of the
vector), its size is the number of features whatever the window length (16 for the short-frame
recipes), so covariances and banks stay small and are estimable from the few minutes of audio an
enrollment records, and the device scores one vector per window (per-frame vectors would multiply
the back end's cost by the frames per window and ask how to pool them). ``log_band_mse`` takes
its logarithm (closer to Gaussian, distances relative); on ToyCar's validation data the linear
``band_mse`` did better for every back end (``benchmarks/results/backends.md``), and is the
trainer's default.

A file holds one back end: a ``kind`` string array, its parameters as arrays, and for the kinds
with a site slot (``knn``, ``selective-mahalanobis``) the site part, which ``edge-asd enroll``
fits on the device with :meth:`KnnBackend.with_site` / :meth:`SelectiveMahalanobisBackend.with_site`.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from edge_asd.errors import BundleError

__all__ = [
    "BACKEND_KINDS",
    "REPRESENTATIONS",
    "ERROR_REPRESENTATIONS",
    "LOG_FLOOR",
    "SITE_BANK_SIZE",
    "Backend",
    "KnnBackend",
    "MahalanobisBackend",
    "SelectiveMahalanobisBackend",
    "GmmBackend",
    "OcsvmBackend",
    "band_errors",
    "represent",
    "shrunk_gaussian",
    "subsample",
    "load_backend",
    "save_backend",
]

BACKEND_KINDS = ("knn", "mahalanobis", "selective-mahalanobis", "gmm", "ocsvm")
REPRESENTATIONS = ("band_mse", "log_band_mse", "embedding")
"""``band_mse``: squared reconstruction error per feature, averaged over the window's frames
(normalised feature units squared); ``log_band_mse``: its natural logarithm after adding
:data:`LOG_FLOOR`; ``embedding``: an embedding model's output (``mobilefacenet``), scaled to unit
length (the ArcFace head trained its directions, not its lengths)."""
ERROR_REPRESENTATIONS = ("band_mse", "log_band_mse")
"""The representations of an autoencoder's error vector; ``embedding`` is an embedding model's."""
LOG_FLOOR = 1e-4
"""Added before the logarithm (normalised units squared): an int8 reconstruction can hit a band
exactly, and log(0) is no score. Normal band errors are around 1e-2 to 1."""
SITE_BANK_SIZE = 1024
"""Vectors kept in a k-NN site bank (a random subset of the site's windows, seed 0). The device
computes the distance to every vector of every bank for every window, about 4 µs per 1024 vectors
here; 1024 + 1024 keep k-NN within the real-time goal (``benchmarks/results/backends.md``)."""
_QUERY_CHUNK = 256
"""Query vectors per block in batch scoring (bounds the temporary distance matrix)."""


def band_errors(window: np.ndarray, output: np.ndarray) -> np.ndarray:
    """The error vector of one window: ``mean over frames of (output − window)²`` per feature.

    Parameters
    ----------
    window
        The normalised model input, ``(n_frames, n_features)``.
    output
        The model output, any shape with ``n_frames · n_features`` elements in the input's order.

    Returns
    -------
    float64 ``(n_features,)``; its mean is the window's reconstruction MSE.
    """
    # Differences and squares in the model's float32 (a float32 square is exact to 1e-7), sums in
    # float64: the fewest numpy calls, this runs for every window on the device.
    d = output.reshape(window.shape) - window
    d *= d
    return d.sum(axis=0, dtype=np.float64) / window.shape[0]


def represent(vectors: np.ndarray, representation: str) -> np.ndarray:
    """The back end's input from error vectors (:func:`band_errors`) or embeddings (the model's
    output), one per row of the last axis (any leading shape)."""
    if representation == "band_mse":
        return vectors
    if representation == "log_band_mse":
        return np.log(vectors + LOG_FLOOR)
    if representation == "embedding":
        v = np.asarray(vectors, dtype=np.float64)
        # An all-zero embedding (int8 can give one) stays zero rather than dividing by zero.
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    raise BundleError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")


def subsample(vectors: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """At most ``n`` rows of ``vectors``, drawn without replacement (kept in their order)."""
    if len(vectors) <= n:
        return np.array(vectors, dtype=np.float64)
    keep = np.sort(np.random.default_rng(seed).choice(len(vectors), size=n, replace=False))
    return np.asarray(vectors[keep], dtype=np.float64)


def shrunk_gaussian(vectors: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, precision)`` of vectors with a shrunk covariance, as scikit-learn's
    ``ShrunkCovariance``: ``(1 − α) S + α · trace(S) / d · I`` with ``S`` the maximum-likelihood
    (biased) covariance and ``α`` = ``shrinkage``; the precision is its pseudo-inverse."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least two vectors to estimate a covariance, got shape {x.shape}")
    mean = x.mean(axis=0)
    c = x - mean
    cov = c.T @ c / len(x)
    mu = np.trace(cov) / cov.shape[0]
    cov = (1.0 - shrinkage) * cov
    cov.flat[:: cov.shape[0] + 1] += shrinkage * mu
    return mean, np.linalg.pinv(cov, hermitian=True)


@runtime_checkable
class Backend(Protocol):
    """A fitted scoring back end: ``score`` maps ``(n, d)`` vectors to ``(n,)`` scores, higher =
    more anomalous."""

    kind: str

    @property
    def dim(self) -> int: ...

    def score(self, vectors: np.ndarray) -> np.ndarray: ...

    def score_one(self, vector: np.ndarray) -> float:
        """``score(vector[None])[0]`` for one float64 ``(d,)`` vector, with the fewest numpy calls
        (the device scores every window alone)."""
        ...

    def arrays(self) -> dict[str, np.ndarray]: ...

    def describe(self) -> str: ...


def _as_queries(vectors: np.ndarray, dim: int) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {np.shape(vectors)}")
    return x


def _mahalanobis_sq(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = x - mean
    return ((d @ precision) * d).sum(axis=1)


def _cached(obj: Any, name: str, make: Any) -> Any:
    """Derived arrays computed once per (frozen) back end: the device scores one window at a time,
    so per-call set-up would dominate."""
    value = obj.__dict__.get(name)
    if value is None:
        value = make()
        object.__setattr__(obj, name, value)
    return value


@dataclass(frozen=True, eq=False)
class KnnBackend:
    """k nearest neighbours with separate memory banks: the score is the mean distance to the
    ``k`` nearest vectors of a bank, the smaller over the factory and the site bank."""

    factory_bank: np.ndarray
    """``(n, d)`` vectors of normal windows the trainer saw (a random subset)."""
    site_bank: np.ndarray | None
    """``(m, d)`` vectors of normal windows where the device listens, or ``None``."""
    k: int
    kind: str = field(default="knn", init=False)

    @property
    def dim(self) -> int:
        return int(self.factory_bank.shape[1])

    def _banks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Both banks in one array (one matrix product per query), its transpose (contiguous: the
        single-query product is 25 % faster), half its rows' squared norms, and each bank's rows."""
        def make():
            banks = [self.factory_bank] + ([self.site_bank] if self.site_bank is not None else [])
            stacked = np.ascontiguousarray(np.concatenate(banks), dtype=np.float64)
            bounds, lo = [], 0
            for b in banks:
                bounds.append((lo, lo + len(b)))
                lo += len(b)
            return stacked, np.ascontiguousarray(stacked.T), 0.5 * (stacked * stacked).sum(axis=1), bounds
        return _cached(self, "_stacked", make)

    def score(self, vectors: np.ndarray) -> np.ndarray:
        x = _as_queries(vectors, self.dim)
        stacked, stacked_t, half_sq, bounds = self._banks()
        out = np.empty(len(x))
        for lo in range(0, len(x), _QUERY_CHUNK):
            q = x[lo : lo + _QUERY_CHUNK]
            # Candidates by the fast expansion (|b|² − 2 q·b + |q|²) / 2, |q|² left out (the same for
            # every b), then the exact distances of the k chosen by direct differences: no
            # cancellation error in the scores.
            approx = half_sq - q @ stacked_t
            best = None
            for b_lo, b_hi in bounds:
                k = min(self.k, b_hi - b_lo)
                part = approx[:, b_lo:b_hi]
                if k == 1:
                    idx = part.argmin(axis=1)[:, None]
                elif k < b_hi - b_lo:
                    idx = np.argpartition(part, k - 1, axis=1)[:, :k]
                else:
                    idx = np.broadcast_to(np.arange(k), (len(q), k))
                diff = stacked[idx + b_lo] - q[:, None, :]
                dist = np.sqrt((diff * diff).sum(axis=2)).mean(axis=1)
                best = dist if best is None else np.minimum(best, dist)
            out[lo : lo + _QUERY_CHUNK] = best
        return out

    def score_one(self, vector: np.ndarray) -> float:
        stacked, stacked_t, half_sq, bounds = self._banks()
        approx = half_sq - vector @ stacked_t
        if self.k == 1:  # the common case, with the fewest calls: the nearest of each bank
            nearest = np.inf
            for b_lo, b_hi in bounds:
                diff = stacked[b_lo + approx[b_lo:b_hi].argmin()] - vector
                nearest = min(nearest, diff @ diff)
            return float(np.sqrt(nearest))
        best = np.inf
        for b_lo, b_hi in bounds:
            k = min(self.k, b_hi - b_lo)
            if k == 1:
                diff = stacked[b_lo + approx[b_lo:b_hi].argmin()] - vector
                dist = float(np.sqrt(diff @ diff))
            else:
                idx = np.argpartition(approx[b_lo:b_hi], k - 1)[:k] if k < b_hi - b_lo else np.arange(k)
                diff = stacked[b_lo + idx] - vector
                dist = float(np.sqrt((diff * diff).sum(axis=1)).mean())
            best = min(best, dist)
        return best

    def with_site(self, vectors: np.ndarray, *, size: int = SITE_BANK_SIZE, seed: int = 0) -> "KnnBackend":
        """This back end with its site bank replaced by (a random subset of) ``vectors``."""
        return KnnBackend(factory_bank=self.factory_bank, site_bank=subsample(_as_queries(vectors, self.dim), size, seed=seed), k=self.k)

    def without_site(self) -> "KnnBackend":
        return KnnBackend(factory_bank=self.factory_bank, site_bank=None, k=self.k)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"factory_bank": self.factory_bank, "k": np.array(self.k)}
        if self.site_bank is not None:
            out["site_bank"] = self.site_bank
        return out

    def describe(self) -> str:
        site = f"site bank {len(self.site_bank)}" if self.site_bank is not None else "no site bank"
        return f"k-NN, k={self.k}, factory bank {len(self.factory_bank)} x {self.dim}, {site}"


@dataclass(frozen=True, eq=False)
class MahalanobisBackend:
    """Squared Mahalanobis distance to the normal vectors' mean."""

    mean: np.ndarray
    precision: np.ndarray
    kind: str = field(default="mahalanobis", init=False)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def score(self, vectors: np.ndarray) -> np.ndarray:
        return _mahalanobis_sq(_as_queries(vectors, self.dim), self.mean, self.precision)

    def score_one(self, vector: np.ndarray) -> float:
        d = vector - self.mean
        return float(d @ self.precision @ d)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "precision": self.precision}

    def describe(self) -> str:
        return f"Mahalanobis, {self.dim} dims"


@dataclass(frozen=True, eq=False)
class SelectiveMahalanobisBackend:
    """DCASE 2023's selective Mahalanobis: the smaller squared distance under the source and the
    target statistics (source only while there is no target)."""

    source_mean: np.ndarray
    source_precision: np.ndarray
    target_mean: np.ndarray | None
    target_precision: np.ndarray | None
    shrinkage: float
    """Covariance shrinkage the statistics were fitted with (the target's on site too)."""
    kind: str = field(default="selective-mahalanobis", init=False)

    @property
    def dim(self) -> int:
        return int(self.source_mean.shape[0])

    def score(self, vectors: np.ndarray) -> np.ndarray:
        x = _as_queries(vectors, self.dim)
        s = _mahalanobis_sq(x, self.source_mean, self.source_precision)
        if self.target_mean is not None:
            s = np.minimum(s, _mahalanobis_sq(x, self.target_mean, self.target_precision))
        return s

    def score_one(self, vector: np.ndarray) -> float:
        d = vector - self.source_mean
        s = float(d @ self.source_precision @ d)
        if self.target_mean is not None:
            d = vector - self.target_mean
            s = min(s, float(d @ self.target_precision @ d))
        return s

    def with_site(self, vectors: np.ndarray, **_: Any) -> "SelectiveMahalanobisBackend":
        """This back end with target statistics fitted on ``vectors`` (same shrinkage)."""
        mean, precision = shrunk_gaussian(_as_queries(vectors, self.dim), self.shrinkage)
        return SelectiveMahalanobisBackend(source_mean=self.source_mean, source_precision=self.source_precision,
                                           target_mean=mean, target_precision=precision, shrinkage=self.shrinkage)

    def without_site(self) -> "SelectiveMahalanobisBackend":
        return SelectiveMahalanobisBackend(source_mean=self.source_mean, source_precision=self.source_precision,
                                           target_mean=None, target_precision=None, shrinkage=self.shrinkage)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"source_mean": self.source_mean, "source_precision": self.source_precision, "shrinkage": np.array(self.shrinkage)}
        if self.target_mean is not None:
            out.update(target_mean=self.target_mean, target_precision=self.target_precision)
        return out

    def describe(self) -> str:
        target = "target statistics" if self.target_mean is not None else "no target statistics"
        return f"selective Mahalanobis, {self.dim} dims, shrinkage {self.shrinkage:.3g}, source and {target}"


COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


@dataclass(frozen=True, eq=False)
class GmmBackend:
    """Negative log-likelihood under a Gaussian mixture (scikit-learn's parameterisation: the
    Cholesky factors of the precisions)."""

    weights: np.ndarray
    means: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str
    kind: str = field(default="gmm", init=False)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def _constants(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(L, m, c)`` such that the log-density of component j at x is ``c_j − |x L_j − m_j|² / 2``
        (``L_j`` the ``(d, d)`` Cholesky factor of the precision, made full for every covariance
        type), as scikit-learn: ``m_j = μ_j L_j``, ``c_j = log w_j − d/2 log 2π + log det L_j``."""
        def make():
            n_comp, d = self.means.shape
            pc = self.precisions_cholesky
            if self.covariance_type == "full":
                chol = pc
            elif self.covariance_type == "tied":
                chol = np.broadcast_to(pc, (n_comp, d, d))
            elif self.covariance_type == "diag":
                chol = np.stack([np.diag(row) for row in pc])
            else:  # spherical
                chol = pc[:, None, None] * np.eye(d)[None]
            chol = np.ascontiguousarray(chol, dtype=np.float64)
            shift = np.einsum("kd,kde->ke", self.means, chol)
            log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
            const = np.log(self.weights) - 0.5 * d * np.log(2 * np.pi) + log_det
            return chol, shift, const
        return _cached(self, "_gmm_constants", make)

    def score(self, vectors: np.ndarray) -> np.ndarray:
        x = _as_queries(vectors, self.dim)
        chol, shift, const = self._constants()
        out = np.empty(len(x))
        for lo in range(0, len(x), _QUERY_CHUNK):
            y = np.matmul(x[lo : lo + _QUERY_CHUNK], chol) - shift[:, None, :]  # (k, n, d)
            log_prob = const[:, None] - 0.5 * (y * y).sum(axis=2)  # (k, n)
            m = log_prob.max(axis=0)
            out[lo : lo + _QUERY_CHUNK] = -(m + np.log(np.exp(log_prob - m).sum(axis=0)))
        return out

    def score_one(self, vector: np.ndarray) -> float:
        chol, shift, const = self._constants()
        y = vector @ chol - shift  # (k, d)
        log_prob = const - 0.5 * (y * y).sum(axis=1)
        m = log_prob.max()
        return -float(m + np.log(np.exp(log_prob - m).sum()))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "means": self.means, "precisions_cholesky": self.precisions_cholesky,
                "covariance_type": np.array(self.covariance_type)}

    def describe(self) -> str:
        return f"GMM, {len(self.weights)} components, {self.covariance_type} covariances, {self.dim} dims"


@dataclass(frozen=True, eq=False)
class OcsvmBackend:
    """One-class SVM with an RBF kernel; the score is the negated decision value
    ``−(Σ αᵢ exp(−γ |sᵢ − x|²) + b)``."""

    support_vectors: np.ndarray
    dual_coef: np.ndarray
    intercept: float
    gamma: float
    kind: str = field(default="ocsvm", init=False)

    @property
    def dim(self) -> int:
        return int(self.support_vectors.shape[1])

    def score(self, vectors: np.ndarray) -> np.ndarray:
        x = _as_queries(vectors, self.dim)
        sv = self.support_vectors
        sv_sq = _cached(self, "_sv_sq", lambda: (sv * sv).sum(axis=1))
        out = np.empty(len(x))
        for lo in range(0, len(x), _QUERY_CHUNK):
            q = x[lo : lo + _QUERY_CHUNK]
            # libsvm's own form of |s − x|²: |s|² + |x|² − 2 s·x.
            d2 = (q * q).sum(axis=1)[:, None] + sv_sq - 2.0 * (q @ sv.T)
            out[lo : lo + _QUERY_CHUNK] = -(np.exp(-self.gamma * d2) @ self.dual_coef + self.intercept)
        return out

    def score_one(self, vector: np.ndarray) -> float:
        sv = self.support_vectors
        sv_sq = _cached(self, "_sv_sq", lambda: (sv * sv).sum(axis=1))
        d2 = sv_sq + (vector @ vector) - 2.0 * (sv @ vector)
        return -float(np.exp(-self.gamma * d2) @ self.dual_coef + self.intercept)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"support_vectors": self.support_vectors, "dual_coef": self.dual_coef,
                "intercept": np.array(self.intercept), "gamma": np.array(self.gamma)}

    def describe(self) -> str:
        return f"one-class SVM (RBF, gamma {self.gamma:.3g}), {len(self.support_vectors)} support vectors, {self.dim} dims"


# -- files --------------------------------------------------------------------------------------

_REQUIRED = {
    "knn": {"factory_bank": 2, "k": 0},
    "mahalanobis": {"mean": 1, "precision": 2},
    "selective-mahalanobis": {"source_mean": 1, "source_precision": 2, "shrinkage": 0},
    "gmm": {"weights": 1, "means": 2, "precisions_cholesky": None, "covariance_type": 0},
    "ocsvm": {"support_vectors": 2, "dual_coef": 1, "intercept": 0, "gamma": 0},
}
_OPTIONAL = {"knn": {"site_bank": 2}, "selective-mahalanobis": {"target_mean": 1, "target_precision": 2}}


def save_backend(backend: Backend, path: str | os.PathLike) -> Path:
    """Write ``backend`` to ``path`` (``.npz``, uncompressed, no pickles) atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    arrays = {k: np.asarray(v) for k, v in backend.arrays().items()}
    with open(tmp, "wb") as fh:
        np.savez(fh, kind=np.array(backend.kind), **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _fail(path: Path, what: str) -> BundleError:
    return BundleError(f"{path}: {what}; re-export the bundle with 'asd-train fit --backend ...' or re-copy it")


MAX_BACKEND_BYTES = 64 * 1024 * 1024
"""Largest total size of a back end file's arrays once loaded, bytes (a 4096-window k-NN bank of
1024-value vectors in float32 is 16 MiB): a small compressed file must not unpack into gigabytes."""


def _check_npz_sizes(path: Path) -> None:
    """Read every array's shape and dtype from its ``.npy`` header, before any array is loaded, and
    refuse object arrays and a total above :data:`MAX_BACKEND_BYTES`."""
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise _fail(path, f"member {info.filename} has an unsupported .npy version {version}")
                if dtype.hasobject:
                    raise _fail(path, "holds pickled (object) arrays, which edge-asd never loads")
                total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if total > MAX_BACKEND_BYTES:
                    raise _fail(path, f"its arrays would take more than {MAX_BACKEND_BYTES // 2**20} MiB once loaded "
                                      f"({info.filename}: shape {shape}, {dtype}); not loaded")
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise _fail(path, f"not a readable npz file ({exc})") from exc


def load_backend(path: str | os.PathLike, *, dim: int | None = None) -> Backend:
    """Read and check a back end file written by :func:`save_backend`.

    Parameters
    ----------
    path
        The ``.npz`` file.
    dim
        The representation's size the bundle's model gives (checked when given).

    Raises
    ------
    BundleError
        The file is missing, not an npz, holds a pickle (object arrays), an unknown kind, missing or
        misshapen arrays, an empty bank, non-finite values, or vectors of another size than ``dim``.
        The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "back end file missing")
    _check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise _fail(path, "holds pickled (object) arrays, which edge-asd never loads") from exc
        raise _fail(path, f"not a readable npz file ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _fail(path, f"not a readable npz file ({exc})") from exc
    if "kind" not in raw or raw["kind"].ndim != 0 or raw["kind"].dtype.kind != "U":
        raise _fail(path, "has no 'kind' string array")
    kind = str(raw["kind"])
    if kind not in BACKEND_KINDS:
        raise _fail(path, f"unknown back end kind {kind!r} (this edge-asd knows {', '.join(BACKEND_KINDS)})")
    wanted = {**_REQUIRED[kind], **{k: v for k, v in _OPTIONAL.get(kind, {}).items() if k in raw}}
    for name, ndim in wanted.items():
        if name not in raw:
            raise _fail(path, f"{kind} back end lacks the array '{name}'")
        a = raw[name]
        if ndim is not None and a.ndim != ndim:
            raise _fail(path, f"array '{name}' has {a.ndim} dimensions, expected {ndim}")
        if a.dtype.kind in "fi" and not np.isfinite(a).all():
            raise _fail(path, f"array '{name}' holds NaN or infinite values")
        if a.dtype.kind in "fi" and a.ndim >= 1 and a.size == 0:
            raise _fail(path, f"array '{name}' is empty")
        if a.dtype.kind not in "fiU":
            raise _fail(path, f"array '{name}' has dtype {a.dtype}, expected numbers")
    f64 = {k: (np.array(v, dtype=np.float64, order="C") if v.dtype.kind == "f" else v) for k, v in raw.items()}
    try:
        backend = _build(kind, f64)
    except (ValueError, TypeError, IndexError) as exc:
        raise _fail(path, f"inconsistent {kind} arrays ({exc})") from exc
    if dim is not None and backend.dim != dim:
        raise BundleError(
            f"{path}: the back end works on {backend.dim}-dimensional vectors but the bundle's model gives "
            f"{dim} per window; the file belongs to another model, re-export the bundle"
        )
    return backend


def _square(a: np.ndarray, d: int, name: str) -> None:
    if a.shape != (d, d):
        raise ValueError(f"{name} has shape {a.shape}, expected ({d}, {d})")


def _build(kind: str, a: Mapping[str, np.ndarray]) -> Backend:
    if kind == "knn":
        bank, k = a["factory_bank"], int(a["k"])
        site = a.get("site_bank")
        if site is not None and site.shape[1] != bank.shape[1]:
            raise ValueError(f"site bank vectors have {site.shape[1]} dims, the factory bank's {bank.shape[1]}")
        if not 1 <= k <= len(bank):
            raise ValueError(f"k = {k} must be between 1 and the factory bank's {len(bank)} vectors")
        return KnnBackend(factory_bank=bank, site_bank=site, k=k)
    if kind == "mahalanobis":
        _square(a["precision"], len(a["mean"]), "precision")
        return MahalanobisBackend(mean=a["mean"], precision=a["precision"])
    if kind == "selective-mahalanobis":
        d = len(a["source_mean"])
        _square(a["source_precision"], d, "source_precision")
        has_target = "target_mean" in a
        if has_target != ("target_precision" in a):
            raise ValueError("target_mean and target_precision come together")
        if has_target:
            if a["target_mean"].shape != (d,):
                raise ValueError(f"target_mean has shape {a['target_mean'].shape}, expected ({d},)")
            _square(a["target_precision"], d, "target_precision")
        shrinkage = float(a["shrinkage"])
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage {shrinkage} outside [0, 1]")
        return SelectiveMahalanobisBackend(source_mean=a["source_mean"], source_precision=a["source_precision"],
                                           target_mean=a.get("target_mean"), target_precision=a.get("target_precision"),
                                           shrinkage=shrinkage)
    if kind == "gmm":
        ct = str(a["covariance_type"])
        w, means, pc = a["weights"], a["means"], a["precisions_cholesky"]
        n, d = means.shape
        expected = {"full": (n, d, d), "tied": (d, d), "diag": (n, d), "spherical": (n,)}.get(ct)
        if expected is None:
            raise ValueError(f"covariance_type {ct!r} is not one of {COVARIANCE_TYPES}")
        if w.shape != (n,) or pc.shape != expected:
            raise ValueError(f"weights {w.shape} / precisions_cholesky {pc.shape} do not fit {n} components of {d} dims ({ct})")
        if (w <= 0).any() or abs(w.sum() - 1.0) > 1e-6:
            raise ValueError("weights must be positive and sum to 1")
        diag = np.diagonal(pc, axis1=-2, axis2=-1) if ct in ("full", "tied") else pc
        if (diag <= 0).any():
            raise ValueError("precision Cholesky factors must have a positive diagonal")
        return GmmBackend(weights=w, means=means, precisions_cholesky=pc, covariance_type=ct)
    sv, coef = a["support_vectors"], a["dual_coef"]
    if coef.shape != (len(sv),):
        raise ValueError(f"dual_coef has shape {coef.shape}, expected ({len(sv)},)")
    gamma = float(a["gamma"])
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return OcsvmBackend(support_vectors=sv, dual_coef=coef, intercept=float(a["intercept"]), gamma=gamma)
