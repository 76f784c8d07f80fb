"""The front end's kernels compiled ahead of time (``edge_asd.frontend.aot``): the same features
as numba's JIT kernels, found only when built from this installation, and never a reason to fail.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from edge_asd.frontend import FeatureConfig, StreamingFrontend
from edge_asd.frontend.aot import build, compiled_kernels, compiled_path, fingerprint, jit_kernels
from tests.device_helpers import REPO


@pytest.fixture(scope="module")
def compiled_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aot")
    build(folder)
    return folder


def _features(kernels, samples: np.ndarray, config: FeatureConfig, block: int) -> np.ndarray:
    fe = StreamingFrontend(config, n_channels=samples.shape[1], kernels=kernels)
    parts = [fe.push(samples[i : i + block]) for i in range(0, len(samples), block)]
    return np.concatenate(parts + [fe.flush()])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["logmel", "ims"])
def test_compiled_kernels_give_the_jit_features(compiled_dir, kind, dtype):
    compiled = compiled_kernels(compiled_dir)
    assert compiled is not None and compiled.source.startswith("ahead-of-time")
    rng = np.random.default_rng(3)
    samples = (0.2 * rng.standard_normal((16000 * 2 + 123, 3))).astype(dtype)
    samples[5000:5400] = 0.0  # silence hits the amin floor in both
    config = FeatureConfig(kind=kind, sr=16000, n_fft=512, hop_length=256, n_mels=32, n_sinc=8)
    # Odd block sizes and a strided (non-contiguous) view of the channels, as a capture may hand over.
    ours = _features(compiled, samples[:, ::2], config, block=777)
    reference = _features(jit_kernels(), samples[:, ::2], config, block=777)
    assert ours.shape == reference.shape and ours.shape[0] > 100
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)  # dB; the same numba code, the same CPU


def test_module_is_found_only_for_this_installation_and_a_broken_one_is_skipped(compiled_dir, tmp_path, caplog):
    assert compiled_path(compiled_dir).is_file()
    assert compiled_path(compiled_dir).name.startswith(f"_kernels_{fingerprint()}.")
    assert compiled_kernels(tmp_path) is None  # nothing built there
    # A module of another fingerprint (other kernels, numba, numpy, Python or CPU) is never loaded.
    other = tmp_path / compiled_path(compiled_dir).name.replace(fingerprint(), "0" * 12)
    other.write_bytes(compiled_path(compiled_dir).read_bytes())
    assert compiled_kernels(tmp_path) is None
    # A file that is no module (the build replaces the module atomically, so a half-written one
    # never appears): a warning naming it and the fix, and the JIT kernels run instead.
    broken = compiled_path(tmp_path)
    broken.write_bytes(b"not a shared library\n" * 100)
    with caplog.at_level(logging.WARNING):
        assert compiled_kernels(tmp_path) is None
    assert str(broken) in caplog.text and "python -m edge_asd.frontend.aot" in caplog.text


def test_build_command_and_check(tmp_path):
    def aot(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_asd.frontend.aot", "--dir", str(tmp_path), *args],
                              capture_output=True, text=True, cwd=REPO, timeout=300)

    check = aot("--check")
    assert check.returncode == 1 and "absent" in check.stdout
    stale = tmp_path / "_kernels_000000000000.so"
    stale.write_bytes(b"old")
    built = aot()
    assert built.returncode == 0, built.stderr
    assert str(compiled_path(tmp_path)) in built.stdout
    assert not stale.exists(), "a module of another fingerprint is left behind"
    assert aot("--check").returncode == 0


def test_features_without_numba_when_compiled_and_with_it_when_asked(compiled_dir):
    """A process computing features loads numba only on the JIT path."""
    code = ("import sys, numpy as np\n"
            "from edge_asd.frontend import FeatureConfig, StreamingFrontend\n"
            "from edge_asd.frontend.aot import compiled_kernels, frontend_kernels\n"
            f"k = compiled_kernels({str(compiled_dir)!r}) if sys.argv[1] == 'aot' else frontend_kernels()\n"
            "StreamingFrontend(FeatureConfig(kind='ims', sr=16000, n_fft=512, hop_length=256, n_mels=32, n_sinc=8),"
            " n_channels=1, kernels=k).push(np.zeros((4000, 1), np.float32))\n"
            "print(k.source.split()[0], 'numba' in sys.modules, 'llvmlite' in sys.modules)\n")
    env = {"EDGE_ASD_KERNELS": "jit"}

    def run(mode: str, **extra: str) -> str:
        import os

        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, cwd=REPO, timeout=300,
                             env={**os.environ, **extra})
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert run("aot") == ["ahead-of-time", "False", "False"]
    assert run("default", **env) == ["numba", "True", "True"]
