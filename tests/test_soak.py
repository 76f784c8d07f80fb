"""A short soak (3 minutes of audio with silence, clipping and quiet stretches, seconds of wall
time) through the real ``edge-asd run``: every period accounted for, no thread or fd growth, RSS
flat after warm-up. The hour-long version is ``python -m benchmarks.soak``."""

from __future__ import annotations

from benchmarks.soak import markdown, soak
from tests.device_helpers import session_bundle


def test_short_soak_accounts_for_every_period_and_grows_nothing(tmp_path):
    r = soak(tmp_path, hours=0.05, bundle=session_bundle())
    assert r["periods_reported"] == r["periods_expected"] == 18, r
    assert r["dropped_blocks"] == "0", r
    assert r["threads_end"] <= r["threads_warm"] and r["fds_end"] <= r["fds_warm"], r
    assert r["rss_end_mb"] - r["rss_warm_mb"] <= 5.0, r
    assert "| 0.05 |" in markdown(r)
