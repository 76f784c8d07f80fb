"""Device TOML profiles: shipped profiles load, errors name the key, CLI-style overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_asd.config import Config, load_config, parse_input_spec
from edge_asd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["default.toml", "mimii-8ch.toml", "respeaker-4mic.toml"])
def test_shipped_profiles_load(name):
    config = load_config(REPO / "firmware_config" / name)
    assert isinstance(config, Config)
    assert config.alarm.onset_k <= config.alarm.onset_n
    if name != "default.toml":
        assert config.input.kind == "microphone" and config.input.channels in (4, 6, 8)
        assert config.device.bundle == Path("/var/lib/edge-asd/bundle")


def test_relative_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "cfg.toml").write_text('[device]\nbundle = "b"\n[input]\nkind = "wav"\npath = "x.wav"\n')
    config = load_config(tmp_path / "cfg.toml")
    assert config.device.bundle == tmp_path / "b" and config.input.path == tmp_path / "x.wav"
    assert config.input.block_size == 1600 and config.input.queue_blocks == 100


@pytest.mark.parametrize(
    "text, key",
    [
        ("[input]\nchannels = 'eight'\n", "input.channels"),
        ("[input]\nchanels = 8\n", "input.chanels"),
        ("[alarm]\nonset_k = 9\nonset_n = 3\n", "alarm.onset_k"),
        ("[alarm]\nperiod_s = -1\n", "alarm.period_s"),
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[mqtt]\ntls = 'yes'\n", "mqtt.tls"),
        ("[device]\nmodel = 'int4'\n", "device.model"),
        ("[input]\nkind = 'folder'\n", "input.path"),
        ("[sensors]\nx = 1\n", "[sensors]"),
        ("input = 3\n", "[input]"),
        ("[input\nchannels = 8\n", "invalid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value) and str(path) in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/edge-asd.toml")


def test_input_spec_overrides(tmp_path):
    base = Config().input
    assert parse_input_spec("mic:3", base).device == 3
    assert parse_input_spec("2", base).device == 2
    assert parse_input_spec("mic:ReSpeaker", base).device == "ReSpeaker"
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    assert parse_input_spec(str(wav), base).kind == "wav"
    assert parse_input_spec(str(tmp_path), base).kind == "folder"
    with pytest.raises(ConfigError, match="no such file"):
        parse_input_spec(str(tmp_path / "missing"), base)
