"""Hostile wav files stop at the edge (issue 17 item 1).

The seeded generator in :mod:`benchmarks.fuzz_wav` writes one file per *kind* of malformed input
(65 kinds: implausible header values, lying chunk sizes, missing or duplicated chunks, truncation,
NaN samples, non-wav bytes, mutated headers of the real MIMII and ToyCar recordings, ...). Here:

- fast unit checks call :func:`read_wav` directly: a clear :class:`AudioFileError` naming the file,
  or finite samples; nothing is allocated for a header that lies;
- all files go through ONE ``python -m edge_asd score BUNDLE f1 f2 ...`` under an address-space
  limit (:data:`MEM_LIMIT_MB`) and a timeout: per file one ``error: <file>: ...`` line or a finite
  score, never a traceback;
- the most dangerous kinds (huge header values) each get their own memory-limited process, so one
  of them blowing up cannot hide behind another's error.
"""

from __future__ import annotations

import math
import os
import tracemalloc

import numpy as np
import pytest

from benchmarks.fuzz_wav import KINDS, FuzzCase, classify, make_cases, outcome_of, run_score
from edge_asd.audio import read_wav, resample, wav_info, write_wav
from edge_asd.audio.wav import MAX_CLIP_SECONDS, MAX_CLIP_SECONDS_ENV, max_clip_seconds, wav_header
from edge_asd.errors import AudioFileError, ParameterError
from tests.conftest import SHARED_DATA

MEM_LIMIT_MB = 1024
"""``RLIMIT_AS`` of the scoring subprocesses, MiB. The smallest limit a healthy ``edge-asd score``
of the tiny bundle fits in (a 1 s synthetic clip, a 10 s 8-channel MIMII clip and a 12 s ToyCar
clip; one thread per library as set below) was 436 MiB here, found by bisection (406 MiB: a
MemoryError while importing), with a resident peak of about 190 MB: numba, LiteRT and OpenBLAS
reserve more address space than they touch. With the default thread counts on 2 cores it was
526 MiB. 1024 leaves room for other library versions and machines, while the old reader, which
grew past 2 GB on a 1 Hz header and asked numpy for 4 GiB on a data size of 2**32 - 1, fails under it."""
TIMEOUT_S = 300.0
"""Timeout of the one scoring run over every file, seconds (about 10 s when healthy)."""
DANGEROUS_TIMEOUT_S = 90.0
"""Timeout of a single-file scoring run, seconds (about 3 s when healthy)."""
SEED = 0

# One thread per library, so the address space a run reserves does not depend on the core count.
_ENV = {**os.environ, **{v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}
_ENV.pop(MAX_CLIP_SECONDS_ENV, None)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory) -> tuple[dict[str, FuzzCase], dict[str, str]]:
    """Every kind's file (``{kind: case}``) and the kinds skipped with their reason."""
    cases, skipped = make_cases(tmp_path_factory.mktemp("fuzz"), seed=SEED, shared_data=SHARED_DATA)
    return {c.kind: c for c in cases}, skipped


def _case(fuzz, kind: str) -> FuzzCase:
    cases, skipped = fuzz
    if kind in skipped:
        pytest.skip(f"{kind}: {skipped[kind]}")
    return cases[kind]


ALL_KINDS = [*KINDS, "directory_named_x_wav"]
DANGEROUS = [
    "sr_one_hz", "sr_u32_max", "channels_65535", "data_size_u32_max", "riff_size_u32_max", "fmt_size_u32_max",
    "chunk_size_near_2_32", "rf64_ds64_size_2_62", "mimii_channels_65535", "mimii_data_size_u32_max", "toycar_sr_u32_max",
]


def test_the_generator_makes_at_least_30_named_kinds_deterministically(tmp_path):
    assert len(set(KINDS)) == len(KINDS) >= 30
    a, _ = make_cases(tmp_path / "a", seed=SEED, shared_data=tmp_path / "no-data")
    b, skipped = make_cases(tmp_path / "b", seed=SEED, shared_data=tmp_path / "no-data")
    assert skipped and all("real recordings absent" in why for why in skipped.values())
    for x, y in zip(a, b):
        if x.path.is_file():
            assert x.path.read_bytes() == y.path.read_bytes(), x.kind
    c, _ = make_cases(tmp_path / "c", seed=SEED + 1, shared_data=tmp_path / "no-data")
    differ = [x.kind for x, z in zip(a, c) if x.path.is_file() and x.path.read_bytes() != z.path.read_bytes()]
    assert "non_wav_random_bytes" in differ
    assert {case.kind for case in a if case.dangerous} <= set(DANGEROUS)


# ------------------------------------------------------------------------------------------------
# Fast unit checks: the reader itself.


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_read_wav_gives_a_clear_error_or_finite_samples(fuzz, kind):
    case = _case(fuzz, kind)
    if case.read == "error":
        with pytest.raises(AudioFileError) as info:
            read_wav(case.path)
        message = str(info.value)
        assert message.startswith(f"{case.path}: "), message
        assert "\n" not in message and "Traceback" not in message
        assert len(message) < 400
    else:
        samples, sr = read_wav(case.path)
        assert samples.dtype == np.float32 and samples.ndim == 2 and samples.shape[0] >= 1
        assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0
        assert wav_info(case.path) == (sr, samples.shape[1], samples.shape[0])


@pytest.mark.parametrize("kind", DANGEROUS)
def test_a_lying_header_allocates_nothing(fuzz, kind):
    case = _case(fuzz, kind)
    tracemalloc.start()
    try:
        with pytest.raises(AudioFileError):
            read_wav(case.path, sr=16000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"{kind}: {peak} bytes traced before the error"


@pytest.mark.parametrize(("bits", "subtype"), [(8, "u1"), (16, "<i2"), (24, None), (32, "<i4"), (32, "<f4"), (64, "<f8")])
def test_reading_needs_a_small_multiple_of_the_file_size(tmp_path, bits, subtype):
    from benchmarks.fuzz_wav import _chunk, _fmt, _riff

    rng = np.random.default_rng(0)
    n, channels = 80_000, 4
    x = rng.uniform(-0.5, 0.5, (n, channels))
    if bits == 24:
        payload = np.round(x * 8e6).astype("<i4").reshape(-1, 1).view(np.uint8)[:, :3].tobytes()
    elif subtype.startswith("<f"):
        payload = x.astype(subtype).tobytes()
    elif bits == 8:
        payload = np.round(x * 127 + 128).astype("u1").tobytes()
    else:
        payload = np.round(x * (2 ** (bits - 1) - 1)).astype(subtype).tobytes()
    tag = 3 if subtype and subtype.startswith("<f") else 1
    path = tmp_path / f"w{bits}.wav"
    path.write_bytes(_riff(_chunk(b"fmt ", _fmt(tag=tag, channels=channels, bits=bits)) + _chunk(b"data", payload)))
    tracemalloc.start()
    try:
        samples, _ = read_wav(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert samples.shape == (n, channels)
    size = path.stat().st_size
    # The float32 result alone is 4 / (bytes per sample) times the file; measured peaks are 1.0 x
    # (float32) to 5.3 x (24-bit: raw bytes, the widened int32, a float64 temporary) the file size.
    assert peak <= 6 * size, f"{bits}-bit: peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"


def test_the_clip_length_limit_names_file_length_limit_and_the_way_to_raise_it(fuzz, monkeypatch):
    case = _case(fuzz, "longer_than_limit")
    monkeypatch.delenv(MAX_CLIP_SECONDS_ENV, raising=False)
    assert max_clip_seconds() == MAX_CLIP_SECONDS == 600.0
    with pytest.raises(AudioFileError) as info:
        wav_info(case.path)
    message = str(info.value)
    for part in (str(case.path), "601.0 s", "600 s limit", f"{MAX_CLIP_SECONDS_ENV}=601", "max_seconds="):
        assert part in message, (part, message)
    # Raised by the environment variable (every command) or by the keyword (Python)...
    monkeypatch.setenv(MAX_CLIP_SECONDS_ENV, "700")
    assert read_wav(case.path)[0].shape == (601 * 8000, 1)
    monkeypatch.delenv(MAX_CLIP_SECONDS_ENV)
    assert wav_info(case.path, max_seconds=601.0) == (8000, 1, 601 * 8000)
    # ... and lowered the same way.
    short = _case(fuzz, "control_pcm16").path
    with pytest.raises(AudioFileError, match="1.0 s long, longer than the 0.5 s limit"):
        read_wav(short, max_seconds=0.5)
    monkeypatch.setenv(MAX_CLIP_SECONDS_ENV, "nonsense")
    with pytest.raises(ParameterError, match=MAX_CLIP_SECONDS_ENV):
        wav_header(short)
    monkeypatch.setenv(MAX_CLIP_SECONDS_ENV, "-5")
    with pytest.raises(ParameterError, match="positive number of seconds"):
        wav_header(short)


def test_the_clip_length_limit_holds_for_training_and_folder_sources(fuzz, tmp_path, monkeypatch):
    # `asd-train fit` reads through trainer.features_cache.clip_features, `run`, `calibrate` and
    # `enroll` through the sources: all end in wav_header, so one limit (and one override) holds.
    from edge_asd.audio.sources import FolderSource
    from edge_asd.frontend import FeatureConfig
    from trainer.features_cache import clip_features

    monkeypatch.delenv(MAX_CLIP_SECONDS_ENV, raising=False)
    long = _case(fuzz, "longer_than_limit").path
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "long.wav").write_bytes(long.read_bytes())
    with pytest.raises(AudioFileError, match=f"{long}: is 601.0 s long.*{MAX_CLIP_SECONDS_ENV}=601"):
        clip_features(long, FeatureConfig(sr=8000, n_fft=256, hop_length=128, n_mels=16))
    with pytest.raises(AudioFileError, match="long.wav: is 601.0 s long"):
        FolderSource(folder)
    monkeypatch.setenv(MAX_CLIP_SECONDS_ENV, "601")
    assert FolderSource(folder).sr == 8000


def test_resampling_only_between_plausible_rates(fuzz):
    x = np.zeros((100, 1), np.float32)
    for orig, target in ((4000, 16000), (16000, 1000), (16000, 384_000), (1, 16000)):
        with pytest.raises(ParameterError, match="8000-192000 Hz"):
            resample(x, orig_sr=orig, target_sr=target)
    assert resample(x, orig_sr=4000, target_sr=4000) is x  # nothing to do: no range check
    with pytest.raises(ParameterError, match="positive integers"):
        resample(x, orig_sr=16000.5, target_sr=16000)
    # The reader refuses before decoding a file it could not resample.
    case = _case(fuzz, "sr_4khz_unresamplable")
    with pytest.raises(AudioFileError, match=r"sampled at 4000 Hz and cannot be resampled to 16000 Hz"):
        read_wav(case.path, sr=16000)
    assert read_wav(_case(fuzz, "resample_48k").path, sr=16000)[0].shape == (16000, 1)


def test_float_files_on_the_int16_scale_still_read(tmp_path):
    # Some writers store float audio as +-32768; that is loud, not corrupt.
    x = np.linspace(-32768, 32767, 1000, dtype=np.float32)[:, None]
    write_wav(tmp_path / "loud.wav", x, 16000, subtype="FLOAT")
    samples, _ = read_wav(tmp_path / "loud.wav")
    assert np.array_equal(samples, x)


# ------------------------------------------------------------------------------------------------
# The product: ``edge-asd score`` in memory-limited subprocesses.


def _check(case: FuzzCase, outcome) -> str | None:
    """What is wrong with one file's outcome, or None."""
    if outcome.status == case.score:
        return None
    return f"{case.kind}: expected {case.score}, got {outcome.status}: {outcome.detail}"


def test_score_of_every_malformed_file_in_one_memory_limited_process(fuzz, tiny_bundle):
    cases, _ = fuzz
    # The folder named x.wav is an input folder with no wav files to `score`, which stops the whole
    # command before scoring; it has its own test below.
    files = [c for c in cases.values() if c.kind != "directory_named_x_wav"]
    rc, out, err, rss_mb, secs = run_score(tiny_bundle, [c.path for c in files], timeout_s=TIMEOUT_S, mem_limit_mb=MEM_LIMIT_MB, env=_ENV)
    assert rc is not None, f"timed out after {secs:.0f} s"
    assert "Traceback" not in err, err[-3000:]
    problems = [p for c in files if (p := _check(c, outcome_of(c.path, out, err)))]
    assert not problems, "\n".join(problems)
    n_errors = sum(c.score == "error" for c in files)
    assert rc == 1 and err.strip().splitlines()[-1] == f"error: {n_errors} of {len(files)} file(s) could not be scored (see above)"
    for line in out.splitlines():
        assert math.isfinite(float(line.rsplit(",", 3)[1])), line


def test_score_of_a_folder_named_like_a_wav_file(fuzz, tiny_bundle):
    case = _case(fuzz, "directory_named_x_wav")
    rc, out, err, _, _ = run_score(tiny_bundle, [case.path], timeout_s=DANGEROUS_TIMEOUT_S, mem_limit_mb=MEM_LIMIT_MB, env=_ENV)
    assert rc == 1 and not out and "Traceback" not in err
    assert f"error: {case.path}: " in err


@pytest.mark.parametrize("kind", DANGEROUS[:6] + ["mimii_channels_65535", "toycar_sr_u32_max"])
def test_score_of_a_huge_header_value_alone_under_the_memory_limit(fuzz, tiny_bundle, kind):
    case = _case(fuzz, kind)
    rc, out, err, rss_mb, secs = run_score(tiny_bundle, [case.path], timeout_s=DANGEROUS_TIMEOUT_S, mem_limit_mb=MEM_LIMIT_MB, env=_ENV)
    outcome = classify(case, rc, out, err)
    assert outcome.status == "error", f"{kind}: {outcome.status} ({outcome.detail}) after {secs:.1f} s, {rss_mb:.0f} MB"
    assert rc == 1 and "Traceback" not in err


def test_a_pipe_named_like_a_wav_file_is_refused_without_blocking(tmp_path):
    # Opening a FIFO for reading blocks until a writer appears: the reader must not even open it.
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioFileError, match="not a regular file"):
        read_wav(fifo)
