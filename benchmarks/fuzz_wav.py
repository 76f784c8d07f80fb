"""Hostile wav files against ``edge-asd score``: every kind of malformed input in its own process.

``python -m benchmarks.fuzz_wav`` writes one file per *kind* of malformed input (a zero or huge
sample rate, 65 535 channels, a data chunk "4 GB long", a fmt chunk that is missing or twice
there, NaN samples, mutated headers of the real recordings in ``../shared/data``, ...), scores each
with ``python -m edge_asd score BUNDLE FILE`` in a fresh process, and prints a markdown table: kind,
what was expected, the outcome (the one-line error, or the score), the child's peak RSS (MB, read
with ``getrusage(RUSAGE_CHILDREN)`` by a fresh wrapper process) and its wall time (s). The table is also written to ``results/fuzz_wav.md``.

The generator (:func:`make_cases`) is shared with ``tests/test_fuzz_wav.py``. It is seeded, so a
kind's file is the same bytes on every run with the same seed; kinds built from the real recordings
are skipped, with the reason, where ``../shared/data`` is absent.

Options: ``--seed N`` (default 0), ``--bundle DIR`` (default: a tiny conv-ae bundle trained here
in a few seconds, as the tests do), ``--timeout S`` per child (default 120), ``--mem-limit-mb MB``
(``RLIMIT_AS`` of each child, default 4096, so a regression fails loudly instead of swapping the
machine), ``--out PATH``.
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGE_ASD_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "fuzz_wav.md"

SR = 16_000
"""Rate of the synthetic clips, Hz (the tiny test bundle's)."""
CLIP_S = 1.0
"""Length of the synthetic clips, seconds (the tiny bundle's window needs about 0.25 s)."""
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_U32_MAX = 0xFFFF_FFFF


@dataclass(frozen=True)
class FuzzCase:
    """One malformed (or control) file and what must happen to it."""

    kind: str
    path: Path
    read: str
    """``"error"``: ``read_wav`` must raise an AudioFileError naming the file; ``"ok"``: it must return finite samples."""
    score: str
    """``"error"``: ``edge-asd score`` must print one ``error: <file>: ...`` line; ``"score"``: a finite score."""
    dangerous: bool
    """A huge header value that once made the reader allocate gigabytes or run for minutes."""


# --------------------------------------------------------------------------------------------
# Byte-level builders. Everything little-endian unless the kind says otherwise.


def _chunk(cid: bytes, body: bytes, size: int | None = None) -> bytes:
    """A chunk: id, declared size (default: the real one), body, pad byte to an even length."""
    declared = len(body) if size is None else size
    return cid + struct.pack("<I", declared) + body + (b"\0" if len(body) % 2 else b"")


def _fmt(*, tag: int = 1, channels: int = 1, sr: int = SR, bits: int = 16, block_align: int | None = None,
         byte_rate: int | None = None, extra: bytes = b"") -> bytes:
    """A fmt chunk's body; block align and byte rate default to the consistent values."""
    ba = channels * max(bits, 8) // 8 if block_align is None else block_align
    br = sr * ba if byte_rate is None else byte_rate
    return struct.pack("<HHIIHH", tag, channels, sr & _U32_MAX, br & _U32_MAX, ba & 0xFFFF, bits) + extra


def _extensible(*, sub_tag: int = 1, channels: int = 1, bits: int = 16, cb_size: int = 22,
                guid: bytes | None = None, sr: int = SR) -> bytes:
    guid = struct.pack("<H", sub_tag) + _GUID_TAIL if guid is None else guid
    extra = struct.pack("<HHI", cb_size, bits, (1 << channels) - 1) + guid
    return _fmt(tag=0xFFFE, channels=channels, bits=bits, sr=sr, extra=extra)


def _riff(chunks: bytes, *, riff_size: int | None = None, magic: bytes = b"RIFF") -> bytes:
    body = b"WAVE" + chunks
    return magic + struct.pack("<I", (len(body) if riff_size is None else riff_size) & _U32_MAX) + body


def _tone(rng: np.random.Generator, n: int, channels: int = 1) -> np.ndarray:
    """A hum plus noise, peak 0.5: audio the tiny bundle can score."""
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 200) * t) + 0.05 * rng.standard_normal(n)
    return np.repeat(x[:, None], channels, axis=1)


def _pcm16(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()


def _pcm24(x: np.ndarray) -> bytes:
    """Little-endian 24-bit PCM: the low three bytes of each int32."""
    wide = np.clip(np.round(x * 8388607), -8388608, 8388607).astype("<i4").reshape(-1, 1).view(np.uint8)
    return wide[:, :3].tobytes()


def _plain(rng: np.random.Generator, **fmt_kw) -> bytes:
    """A healthy 1 s 16-bit mono file, with fmt fields overridden by ``fmt_kw``."""
    return _riff(_chunk(b"fmt ", _fmt(**fmt_kw)) + _chunk(b"data", _pcm16(_tone(rng, int(CLIP_S * SR)))))


def _data_sized(rng: np.random.Generator, size: int) -> bytes:
    """A healthy file whose data chunk declares ``size`` bytes (RIFF size consistent with the file)."""
    return _riff(_chunk(b"fmt ", _fmt()) + _chunk(b"data", _pcm16(_tone(rng, int(CLIP_S * SR))), size=size))


def _float32(rng: np.random.Generator, poison: float | None) -> bytes:
    x = _tone(rng, int(CLIP_S * SR)).astype("<f4")
    if poison is not None:
        x[len(x) // 2] = poison
    return _riff(_chunk(b"fmt ", _fmt(tag=3, bits=32)) + _chunk(b"data", x.tobytes()))


def _locate(data: bytes) -> dict[bytes, int]:
    """Offsets of the fmt and data chunk headers of a real (well-formed) file."""
    found, pos = {}, 12
    while pos + 8 <= len(data) and b"data" not in found:
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        found[cid] = pos
        pos += 8 + size + (size & 1)
    return found


def _mutate(data: bytes, *, chunk: bytes, offset: int, value: bytes) -> bytes:
    """``data`` with ``value`` written ``offset`` bytes into the body of ``chunk``."""
    at = _locate(data)[chunk] + 8 + offset
    return data[:at] + value + data[at + len(value) :]


# --------------------------------------------------------------------------------------------
# The kinds: name -> (builder, read expectation, score expectation, dangerous, real data folder).
# A builder gets a seeded generator (and for real kinds the real file's bytes) and returns bytes.

Builder = Callable[..., bytes]
_KINDS: dict[str, tuple[Builder, str, str, bool, str | None]] = {}


def _kind(name: str, read: str, score: str, *, dangerous: bool = False, real: str | None = None):
    def register(fn: Builder) -> Builder:
        _KINDS[name] = (fn, read, score, dangerous, real)
        return fn

    return register


_kind("control_pcm16", "ok", "score")(lambda rng: _plain(rng))
_kind("control_pcm24_extensible", "ok", "score")(
    lambda rng: _riff(_chunk(b"fmt ", _extensible(bits=24)) + _chunk(b"data", _pcm24(_tone(rng, SR))))
)
_kind("control_rifx_big_endian", "ok", "score")(
    lambda rng: b"RIFX" + struct.pack(">I", 4 + 24 + 8 + 2 * SR) + b"WAVE"
    + b"fmt " + struct.pack(">IHHIIHH", 16, 1, 1, SR, 2 * SR, 2, 16)
    + b"data" + struct.pack(">I", 2 * SR) + np.round(_tone(rng, SR)[:, 0] * 32767).astype(">i2").tobytes()
)
_kind("resample_48k", "ok", "score")(
    lambda rng: _riff(_chunk(b"fmt ", _fmt(sr=48_000)) + _chunk(b"data", _pcm16(_tone(rng, 48_000))))
)
_kind("sr_zero", "error", "error")(lambda rng: _plain(rng, sr=0, byte_rate=0))
_kind("sr_one_hz", "error", "error", dangerous=True)(lambda rng: _plain(rng, sr=1))
_kind("sr_4khz_unresamplable", "ok", "error")(lambda rng: _plain(rng, sr=4000))
_kind("sr_500khz", "error", "error")(lambda rng: _plain(rng, sr=500_000))
_kind("sr_u32_max", "error", "error", dangerous=True)(lambda rng: _plain(rng, sr=_U32_MAX, byte_rate=0))
_kind("channels_zero", "error", "error")(lambda rng: _plain(rng, channels=0, block_align=2))
_kind("channels_65535", "error", "error", dangerous=True)(lambda rng: _plain(rng, channels=65535))
_kind("block_align_zero", "error", "error")(lambda rng: _plain(rng, block_align=0))
_kind("block_align_wrong", "error", "error")(lambda rng: _plain(rng, block_align=3))
_kind("byte_rate_wrong", "error", "error")(lambda rng: _plain(rng, byte_rate=12345))
_kind("bits_zero", "error", "error")(lambda rng: _plain(rng, bits=0, block_align=2))
_kind("bits_7", "error", "error")(lambda rng: _plain(rng, bits=7, block_align=2))
_kind("bits_12", "error", "error")(lambda rng: _plain(rng, bits=12, block_align=2))
_kind("bits_64_pcm", "error", "error")(lambda rng: _plain(rng, bits=64))
_kind("bits_16_float", "error", "error")(lambda rng: _plain(rng, tag=3))
_kind("format_tag_zero", "error", "error")(lambda rng: _plain(rng, tag=0))
_kind("format_tag_mulaw", "error", "error")(lambda rng: _plain(rng, tag=7, bits=8))
_kind("extensible_bad_subformat", "error", "error")(
    lambda rng: _riff(_chunk(b"fmt ", _extensible(guid=rng.bytes(16))) + _chunk(b"data", _pcm16(_tone(rng, SR))))
)
_kind("extensible_adpcm_subformat", "error", "error")(
    lambda rng: _riff(_chunk(b"fmt ", _extensible(sub_tag=2)) + _chunk(b"data", _pcm16(_tone(rng, SR))))
)
_kind("extensible_cbsize_short", "error", "error")(
    lambda rng: _riff(_chunk(b"fmt ", _extensible(cb_size=0)) + _chunk(b"data", _pcm16(_tone(rng, SR))))
)
_kind("extensible_fmt_cut_to_18", "error", "error")(
    lambda rng: _riff(_chunk(b"fmt ", _extensible()[:18]) + _chunk(b"data", _pcm16(_tone(rng, SR))))
)
_kind("data_size_zero", "error", "error")(lambda rng: _data_sized(rng, 0))
_kind("data_size_u32_max", "error", "error", dangerous=True)(lambda rng: _data_sized(rng, _U32_MAX))
_kind("data_size_odd_partial_frame", "ok", "score")(
    lambda rng: _riff(_chunk(b"fmt ", _fmt(channels=2)) + _chunk(b"data", _pcm16(_tone(rng, SR, 2)) + b"\x01\x02\x03"))
)
_kind("riff_size_u32_max", "error", "error", dangerous=True)(
    lambda rng: _riff(_chunk(b"fmt ", _fmt()) + _chunk(b"data", _pcm16(_tone(rng, SR))), riff_size=_U32_MAX)
)
_kind("riff_size_too_small", "ok", "score")(lambda rng: _riff(_chunk(b"fmt ", _fmt()) + _chunk(b"data", _pcm16(_tone(rng, SR))), riff_size=4))
_kind("fmt_too_short", "error", "error")(lambda rng: _riff(_chunk(b"fmt ", _fmt()[:14]) + _chunk(b"data", _pcm16(_tone(rng, SR)))))
_kind("fmt_size_u32_max", "error", "error", dangerous=True)(
    lambda rng: _riff(_chunk(b"fmt ", _fmt(), size=_U32_MAX - 1) + _chunk(b"data", _pcm16(_tone(rng, SR))))
)
_kind("fmt_missing", "error", "error")(lambda rng: _riff(_chunk(b"data", _pcm16(_tone(rng, SR)))))
_kind("fmt_duplicated", "error", "error")(
    lambda rng: _riff(_chunk(b"fmt ", _fmt()) + _chunk(b"fmt ", _fmt(channels=8)) + _chunk(b"data", _pcm16(_tone(rng, SR))))
)
_kind("data_missing", "error", "error")(lambda rng: _riff(_chunk(b"fmt ", _fmt()) + _chunk(b"LIST", rng.bytes(64))))
_kind("data_before_fmt", "error", "error")(lambda rng: _riff(_chunk(b"data", _pcm16(_tone(rng, SR))) + _chunk(b"fmt ", _fmt())))
_kind("chunk_size_near_2_32", "error", "error", dangerous=True)(
    lambda rng: _riff(_chunk(b"fmt ", _fmt()) + _chunk(b"LIST", rng.bytes(32), size=_U32_MAX - 7) + _chunk(b"data", _pcm16(_tone(rng, SR))))
)
_kind("chunk_flood", "error", "error")(
    lambda rng: _riff(_chunk(b"fmt ", _fmt()) + b"".join(_chunk(b"JUNK", b"") for _ in range(5000)) + _chunk(b"data", _pcm16(_tone(rng, SR))))
)
_kind("rf64_ds64_size_2_62", "error", "error", dangerous=True)(
    lambda rng: _riff(_chunk(b"ds64", struct.pack("<QQQI", 1 << 62, 1 << 62, 1 << 61, 0)) + _chunk(b"fmt ", _fmt())
                      + _chunk(b"data", _pcm16(_tone(rng, SR)), size=_U32_MAX), magic=b"RF64")
)
_kind("truncated_mid_riff", "error", "error")(lambda rng: _plain(rng)[:7])
_kind("truncated_mid_fmt", "error", "error")(lambda rng: _plain(rng)[:30])
_kind("truncated_mid_sample", "error", "error")(lambda rng: _plain(rng)[: 44 + 2 * 8000 + 1])
_kind("float_nan", "error", "error")(lambda rng: _float32(rng, math.nan))
_kind("float_inf", "error", "error")(lambda rng: _float32(rng, -math.inf))
_kind("float_1e30", "error", "error")(lambda rng: _float32(rng, 1e30))
_kind("all_zero_samples", "ok", "score")(lambda rng: _riff(_chunk(b"fmt ", _fmt()) + _chunk(b"data", bytes(2 * SR))))
_kind("one_sample", "ok", "error")(lambda rng: _riff(_chunk(b"fmt ", _fmt()) + _chunk(b"data", b"\x01\x00")))
_kind("longer_than_limit", "error", "error")(
    # 601 s at 8 kHz, 8 bit: 4.8 MB of silence, just over the default 600 s limit.
    lambda rng: _riff(_chunk(b"fmt ", _fmt(sr=8000, bits=8)) + _chunk(b"data", b"\x80" * (601 * 8000)))
)
_kind("non_wav_random_bytes", "error", "error")(lambda rng: rng.bytes(4096))
_kind("text_file", "error", "error")(lambda rng: b"machine,score\nfan,0.1\n" * 20)
_kind("empty_file", "error", "error")(lambda rng: b"")
_kind("riff_avi_not_wave", "error", "error")(lambda rng: b"RIFF" + struct.pack("<I", 4 + 64) + b"AVI " + rng.bytes(64))

# Mutated headers of the real recordings (8-channel WAVE_FORMAT_EXTENSIBLE MIMII, mono DCASE ToyCar).
_MIMII, _TOYCAR = "mimii-samples", "dcase2023-toycar"
_kind("mimii_intact", "ok", "score", real=_MIMII)(lambda rng, d: d)
_kind("mimii_channels_65535", "error", "error", dangerous=True, real=_MIMII)(
    lambda rng, d: _mutate(d, chunk=b"fmt ", offset=2, value=struct.pack("<H", 65535))
)
_kind("mimii_sr_zero", "error", "error", real=_MIMII)(lambda rng, d: _mutate(d, chunk=b"fmt ", offset=4, value=bytes(4)))
_kind("mimii_block_align_zero", "error", "error", real=_MIMII)(lambda rng, d: _mutate(d, chunk=b"fmt ", offset=12, value=bytes(2)))
_kind("mimii_bad_subformat", "error", "error", real=_MIMII)(lambda rng, d: _mutate(d, chunk=b"fmt ", offset=24, value=rng.bytes(16)))
_kind("mimii_data_size_u32_max", "error", "error", dangerous=True, real=_MIMII)(
    lambda rng, d: _mutate(d, chunk=b"data", offset=-4, value=struct.pack("<I", _U32_MAX))
)
_kind("mimii_truncated_mid_sample", "error", "error", real=_MIMII)(lambda rng, d: d[: len(d) * 3 // 5 + 1])
_kind("toycar_intact", "ok", "score", real=_TOYCAR)(lambda rng, d: d)
_kind("toycar_sr_u32_max", "error", "error", dangerous=True, real=_TOYCAR)(
    lambda rng, d: _mutate(d, chunk=b"fmt ", offset=4, value=struct.pack("<I", _U32_MAX))
)
_kind("toycar_bits_12", "error", "error", real=_TOYCAR)(lambda rng, d: _mutate(d, chunk=b"fmt ", offset=14, value=struct.pack("<H", 12)))
_kind("toycar_riff_size_lie", "error", "error", real=_TOYCAR)(
    lambda rng, d: d[:4] + struct.pack("<I", len(d) + 1_000_000) + d[8:]
)
_kind("toycar_truncated_mid_header", "error", "error", real=_TOYCAR)(lambda rng, d: d[:30])
_kind("toycar_random_header_bytes", "error", "error", real=_TOYCAR)(lambda rng, d: d[:20] + rng.bytes(16) + d[36:])

KINDS: tuple[str, ...] = tuple(_KINDS)
"""Every kind's name, in table order."""


def real_file(folder: str, shared_data: Path = SHARED_DATA) -> Path | None:
    """The first real recording (sorted path) below ``shared_data/folder``, or ``None`` if absent."""
    root = shared_data / folder
    files = sorted(root.rglob("*.wav")) if root.is_dir() else []
    return files[0] if files else None


def make_cases(out_dir: Path, *, seed: int = 0, shared_data: Path = SHARED_DATA) -> tuple[list[FuzzCase], dict[str, str]]:
    """Write one file per kind into ``out_dir``; return the cases and ``{kind: why skipped}``.

    Each kind gets its own generator seeded from ``(seed, kind index)``, so adding a kind never
    changes another's bytes. Kinds built from a real recording are skipped when its folder is absent.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases, skipped = [], {}
    for index, (kind, (build, read, score, dangerous, real)) in enumerate(_KINDS.items()):
        rng = np.random.default_rng([seed, index])
        path = out_dir / f"{kind}.wav"
        if real is not None:
            source = real_file(real, shared_data)
            if source is None:
                skipped[kind] = f"real recordings absent: {shared_data / real} (see ../shared/data/README.md)"
                continue
            path.write_bytes(build(rng, source.read_bytes()))
        else:
            path.write_bytes(build(rng))
        cases.append(FuzzCase(kind, path, read, score, dangerous))
    # Not a file at all: a folder that looks like a wav file by its name.
    folder = out_dir / "directory_named_x.wav"
    folder.mkdir(exist_ok=True)
    cases.append(FuzzCase("directory_named_x_wav", folder, "error", "error", False))
    return cases, skipped


# --------------------------------------------------------------------------------------------
# Running ``edge-asd score`` and reading its output.


@dataclass(frozen=True)
class Outcome:
    """What ``edge-asd score`` did with one file."""

    status: str
    """``"score"``, ``"error"``, ``"traceback"``, ``"nonfinite"``, ``"missing"`` (no line about the file), ``"timeout"``, ``"killed"``."""
    detail: str
    """The score, or the error line without the ``error: <file>:`` prefix, or what went wrong."""


def outcome_of(path: Path, stdout: str, stderr: str) -> Outcome:
    """Read one file's result out of a ``score`` run's output (a run may have scored many files)."""
    if "Traceback (most recent call last)" in stderr:
        last = [line for line in stderr.strip().splitlines() if line.strip()][-1]
        return Outcome("traceback", last[:200])
    prefix = f"error: {path}: "
    errors = [line[len(prefix):] for line in stderr.splitlines() if line.startswith(prefix)]
    scores = [line[len(str(path)) + 1:] for line in stdout.splitlines() if line.startswith(f"{path},")]
    if errors and not scores:
        return Outcome("error", errors[0])
    if scores and not errors:
        value = float(scores[0].split(",")[0])
        return Outcome("score" if math.isfinite(value) else "nonfinite", scores[0])
    return Outcome("missing", f"{len(errors)} error and {len(scores)} score lines")


_WRAPPER = """
import json, resource, subprocess, sys
args = json.loads(sys.argv[1])
def limit():
    if args["mem_mb"]:
        resource.setrlimit(resource.RLIMIT_AS, (args["mem_mb"] << 20, args["mem_mb"] << 20))
try:
    rc = subprocess.run(args["cmd"], preexec_fn=limit, timeout=args["timeout"], cwd=args["cwd"]).returncode
except subprocess.TimeoutExpired:  # run() has killed and reaped the child
    rc = None
with open(args["report"], "w") as fh:
    json.dump({"rc": rc, "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, fh)
"""
# A child's ru_maxrss starts at its parent's RSS at fork (Linux keeps the high-water mark across
# exec), so a child of a big process (pytest with TensorFlow loaded, or this benchmark after
# training) would report the parent's size. A fresh, small wrapper interpreter starts the child and
# reports RUSAGE_CHILDREN: the child's own peak (the wrapper's ~10 MB is the floor).


def run_score(bundle: Path, files: list[Path], *, timeout_s: float, mem_limit_mb: int | None,
              env: dict[str, str] | None = None) -> tuple[int | None, str, str, float, float]:
    """Run ``python -m edge_asd score BUNDLE FILES...`` with its address space (``RLIMIT_AS``)
    capped at ``mem_limit_mb`` MiB (``None``: no cap) and killed after ``timeout_s`` seconds.

    Returns ``(exit code, or None on timeout; stdout; stderr; peak RSS of the scoring process in MB;
    wall time in s)``.
    """
    import json

    with tempfile.TemporaryDirectory(prefix="edge-asd-fuzz-run-") as tmp:
        report = Path(tmp) / "report.json"
        spec = {
            "cmd": [sys.executable, "-m", "edge_asd", "score", str(bundle), *map(str, files)],
            "mem_mb": mem_limit_mb or 0, "timeout": timeout_s, "cwd": str(REPO), "report": str(report),
        }
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        t0 = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(spec)], stdout=out, stderr=err, env=env,
                           timeout=timeout_s + 60, check=False)
        elapsed = time.perf_counter() - t0
        result = json.loads(report.read_text())
        # ru_maxrss is in KiB on Linux.
        return (result["rc"], out_path.read_text(errors="replace"), err_path.read_text(errors="replace"),
                result["maxrss_kb"] / 1024, elapsed)


def classify(case: FuzzCase, rc: int | None, stdout: str, stderr: str) -> Outcome:
    """A single-file run's outcome, including a timeout or a kill by a signal."""
    if rc is None:
        return Outcome("timeout", "")
    if rc < 0:
        return Outcome("killed", f"signal {-rc}")
    return outcome_of(case.path, stdout, stderr)


def _train_bundle(work: Path) -> Path:
    from tests.bundle_factory import make_bundle

    return make_bundle(work / "bundle-train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per child")
    parser.add_argument("--mem-limit-mb", type=int, default=4096, help="RLIMIT_AS of each child, MiB (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from benchmarks._common import machine, markdown_table

    with tempfile.TemporaryDirectory(prefix="edge-asd-fuzz-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or _train_bundle(work)
        cases, skipped = make_cases(work / "cases", seed=args.seed)
        rows, bad = [], 0
        for case in cases:
            rc, out, err, rss, secs = run_score(bundle, [case.path], timeout_s=args.timeout, mem_limit_mb=args.mem_limit_mb or None)
            result = classify(case, rc, out, err)
            ok = result.status == case.score
            bad += not ok
            detail = result.detail.replace("|", "\\|").replace(str(case.path), "FILE")
            if len(detail) > 110:
                detail = detail[:107] + "..."
            rows.append([case.kind + (" ⚠" if case.dangerous else ""), case.score,
                         f"{result.status}{'' if ok else ' (UNEXPECTED)'}: {detail}", f"{rss:.0f}", f"{secs:.1f}"])
            print(f"{case.kind}: {result.status} {rss:.0f} MB {secs:.1f} s", file=sys.stderr)
        for kind, why in skipped.items():
            rows.append([kind, "", f"skipped: {why}", "", ""])
    m = machine()
    text = (
        "# Hostile wav files against `edge-asd score`\n\n"
        f"`python -m benchmarks.fuzz_wav --seed {args.seed}`: one fresh `python -m edge_asd score BUNDLE FILE` per kind "
        f"(RLIMIT_AS {args.mem_limit_mb} MiB, timeout {args.timeout:g} s); peak RSS of the child (MB, `getrusage(RUSAGE_CHILDREN)` in a fresh wrapper process), "
        f"wall time including the interpreter's start and the bundle's load (s). ⚠: a huge header value. "
        f"{len(cases)} kinds run, {bad} unexpected, {len(skipped)} skipped. Machine: {m['cpu']}, {m['nproc']} cores, "
        f"Python {m['python']}.\n\n"
        + markdown_table(["kind", "expected", "outcome", "peak RSS MB", "time s"], rows)
        + "\n"
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
