"""Reading wav files: every sample format we promise, real MIMII extensible files, resampling, and
a clear AudioFileError (naming the file) for every kind of malformed input."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

from edge_asd.audio import read_wav, resample, wav_info, write_wav
from edge_asd.errors import AudioFileError, EdgeASDError


def raw_wav(path: Path, payload: bytes, *, channels: int, sr: int, bits: int, tag: int = 1, extensible: bool = False) -> Path:
    """A wav file built byte by byte, for formats scipy cannot write (24-bit, extensible)."""
    block = channels * bits // 8
    if extensible:
        guid = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHH", 0xFFFE, channels, sr, sr * block, block, bits)
        fmt += struct.pack("<HHI", 22, bits, (1 << channels) - 1) + guid
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, sr, sr * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_reads_real_mimii_extensible_8_channel_files(mimii_samples):
    files = sorted(mimii_samples.rglob("*.wav"))
    assert len(files) == 4
    for path in files:
        samples, sr = read_wav(path, channels=8)
        assert sr == 16000 and samples.shape == (160000, 8) and samples.dtype == np.float32
        assert 0 < np.abs(samples).max() <= 1.0
        # the channels are different microphones, not copies
        assert not np.allclose(samples[:, 0], samples[:, 4])
        assert wav_info(path) == (16000, 8, 160000)


def test_reads_real_dcase_mono_files(dcase2020_samples, dcase2023_toycar):
    s20, sr20 = read_wav(next(dcase2020_samples.rglob("*.wav")))
    s23, sr23 = read_wav(next(dcase2023_toycar.rglob("*.wav")))
    assert (s20.shape, sr20) == ((160000, 1), 16000)
    assert (s23.shape, sr23) == ((192000, 1), 16000)


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("extensible", [False, True])
def test_reads_every_pcm_width_plain_and_extensible(tmp_path, bits, extensible):
    rng = np.random.default_rng(bits)
    truth = rng.uniform(-0.9, 0.9, size=(500, 3))
    full = 2 ** (bits - 1)
    ints = np.round(truth * full).astype(np.int64)
    if bits == 8:
        payload = (ints + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        le = (ints & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]
        payload = le.tobytes()
    else:
        payload = ints.astype(f"<i{bits // 8}").tobytes()
    path = raw_wav(tmp_path / "x.wav", payload, channels=3, sr=16000, bits=bits, extensible=extensible)
    samples, sr = read_wav(path)
    assert sr == 16000 and samples.shape == (500, 3) and samples.dtype == np.float32
    np.testing.assert_allclose(samples, truth, atol=1.0 / full + 1e-6)


def test_reads_float32_and_mono(tmp_path):
    x = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    scipy.io.wavfile.write(tmp_path / "f.wav", 22050, x)
    samples, sr = read_wav(tmp_path / "f.wav")
    assert sr == 22050 and samples.shape == (1000, 1)
    np.testing.assert_array_equal(samples[:, 0], x)


def test_write_then_read_round_trip(tmp_path):
    x = (0.3 * np.sin(np.arange(8000) / 5.0)).astype(np.float32)[:, None].repeat(2, axis=1)
    write_wav(tmp_path / "sub" / "y.wav", x, 16000)
    y, sr = read_wav(tmp_path / "sub" / "y.wav", channels=2)
    assert sr == 16000
    np.testing.assert_allclose(y, x, atol=1 / 32768)
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_resamples_48k_to_16k_keeping_the_tone(tmp_path):
    sr_in, f0 = 48000, 1000.0
    t = np.arange(sr_in) / sr_in
    write_wav(tmp_path / "48k.wav", 0.5 * np.sin(2 * np.pi * f0 * t), sr_in)
    samples, sr = read_wav(tmp_path / "48k.wav", sr=16000)
    assert sr == 16000 and samples.shape == (16000, 1)
    spectrum = np.abs(np.fft.rfft(samples[:, 0]))
    assert np.argmax(spectrum) == pytest.approx(f0, abs=1)  # 1 Hz bins for a 1 s signal
    # a tone above the new Nyquist is removed, not aliased
    hi = resample((0.5 * np.sin(2 * np.pi * 12000 * t))[:, None], orig_sr=sr_in, target_sr=16000)
    assert np.abs(hi[100:-100]).max() < 0.01


def _malformed(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.wav"
    write_wav(good, 0.1 * np.ones((16000, 2)), 16000)
    data = good.read_bytes()
    cases = {}

    def put(name: str, content: bytes) -> None:
        (tmp_path / name).write_bytes(content)
        cases[name] = tmp_path / name

    put("empty.wav", b"")
    put("header_cut.wav", data[:30])
    put("data_cut_odd.wav", data[: len(data) // 2 + 1])
    put("data_cut_even.wav", data[: len(data) // 2])
    put("header_only.wav", data[:44])
    put("text.wav", b"this is not audio at all\n" * 10)
    put("random.wav", np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    put("riff_not_wave.wav", b"RIFF" + struct.pack("<I", 100) + b"AVI " + bytes(100))
    put("flac_named_wav.wav", b"fLaC" + bytes(200))
    raw_wav(tmp_path / "alaw.wav", bytes(1000), channels=1, sr=16000, bits=8, tag=6)
    cases["alaw.wav"] = tmp_path / "alaw.wav"
    raw_wav(tmp_path / "zero_rate.wav", bytes(1000), channels=1, sr=0, bits=16)
    cases["zero_rate.wav"] = tmp_path / "zero_rate.wav"
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        x = np.zeros((100, 1), np.float32)
        x[50] = bad
        scipy.io.wavfile.write(tmp_path / name, 16000, x)
        cases[name] = tmp_path / name
    cases["missing.wav"] = tmp_path / "missing.wav"
    cases["a_folder.wav"] = tmp_path / "a_folder.wav"
    cases["a_folder.wav"].mkdir()
    return cases


def test_malformed_audio_gives_a_clear_error_naming_the_file(tmp_path):
    cases = _malformed(tmp_path)
    assert len(cases) >= 10
    for name, path in cases.items():
        with pytest.raises(AudioFileError) as info:
            read_wav(path)
        message = str(info.value)
        assert str(path) in message, name
        assert "Traceback" not in message
        assert isinstance(info.value, EdgeASDError)


def test_wrong_channel_count_is_an_error(tmp_path):
    write_wav(tmp_path / "st.wav", np.zeros((100, 2)), 16000)
    with pytest.raises(AudioFileError, match="2 channel.*8 are expected"):
        read_wav(tmp_path / "st.wav", channels=8)



def _scipy_float32(path: Path) -> tuple[np.ndarray, int]:
    """What the reader returned before it parsed headers itself: scipy's samples, scaled as now."""
    from edge_asd.audio.wav import pcm_to_float32

    sr, data = scipy.io.wavfile.read(path)
    # scipy keeps RIFX samples big-endian, which the old reader then refused; compare values.
    data = data.astype(data.dtype.newbyteorder("="))
    return pcm_to_float32(data if data.ndim == 2 else data[:, None]), sr


def test_real_files_decode_bit_for_bit_as_scipy_decoded_them(mimii_samples, dcase2023_toycar):
    files = sorted(mimii_samples.rglob("*.wav")) + sorted(dcase2023_toycar.rglob("*.wav"))[:20]
    for path in files:
        want, want_sr = _scipy_float32(path)
        got, sr = read_wav(path)
        assert sr == want_sr and got.dtype == np.float32 and np.array_equal(got, want), path


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize(("bits", "kind"), [(8, "u"), (16, "i"), (24, "i"), (32, "i"), (32, "f"), (64, "f")])
def test_every_format_decodes_bit_for_bit_as_scipy_decoded_it(tmp_path, endian, bits, kind):
    # scipy reads RIFF and RIFX (big-endian) files of every width; our parser must agree exactly.
    rng = np.random.default_rng(bits)
    n, channels = 300, 3
    if kind == "f":
        payload = rng.uniform(-1, 1, (n, channels)).astype(f"{endian}f{bits // 8}").tobytes()
    elif bits == 8:
        payload = rng.integers(0, 256, (n, channels), dtype=np.uint8).tobytes()
    elif bits == 24:
        wide = rng.integers(-(2**23), 2**23, (n * channels,)).astype(">i4" if endian == ">" else "<i4").view(np.uint8)
        payload = (wide.reshape(-1, 4)[:, 1:] if endian == ">" else wide.reshape(-1, 4)[:, :3]).tobytes()
    else:
        payload = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (n, channels)).astype(f"{endian}i{bits // 8}").tobytes()
    tag = 3 if kind == "f" else 1
    block = channels * bits // 8
    fmt = struct.pack(f"{endian}HHIIHH", tag, channels, 16000, 16000 * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack(f"{endian}I", 16) + fmt + b"data" + struct.pack(f"{endian}I", len(payload)) + payload
    path = tmp_path / "x.wav"
    path.write_bytes((b"RIFX" if endian == ">" else b"RIFF") + struct.pack(f"{endian}I", len(body)) + body)
    want, _ = _scipy_float32(path)
    got, sr = read_wav(path)
    assert sr == 16000 and got.shape == (n, channels) and np.array_equal(got, want)
