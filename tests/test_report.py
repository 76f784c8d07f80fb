"""Reports rendered from small fixed tables: CSV contents, JSON, markdown and valid PNG files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from edge_asd.errors import ParameterError
from trainer.datasets import Clip
from trainer.report import ScoredRow, evaluate_rows, write_report

# fan id_00 and id_02 at two SNRs: 4 normal + 2 anomalous clips each, fixed scores
SCORES = {
    ("id_00", 6.0): ([0.1, 0.2, 0.3, 0.4], [0.9, 0.35]),
    ("id_02", 6.0): ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0]),
    ("id_00", -6.0): ([0.5, 0.6, 0.7, 0.8], [0.55, 0.4]),
    ("id_02", -6.0): ([3.0, 1.0, 2.0, 4.0], [3.5, 2.5]),
}


def mimii_rows(root: Path) -> list[ScoredRow]:
    rows = []
    for (id_, snr), (normal, anomalous) in SCORES.items():
        for label, folder, scores in (("normal", "normal", normal), ("anomaly", "abnormal", anomalous)):
            for k, s in enumerate(scores):
                clip = Clip(path=root / f"{snr:g}_dB_fan/fan/{id_}/{folder}/{k:08d}.wav", machine="fan", id=id_,
                            snr_db=snr, label=label)
                rows.append(ScoredRow(clip=clip, score=s, extra={"score_int8": round(s * 2) / 2}))
    return rows


def expected_auc(id_: str, snr: float, quantise: bool = False) -> float:
    normal, anomalous = SCORES[(id_, snr)]
    s = np.array(normal + anomalous)
    if quantise:
        s = np.round(s * 2) / 2
    return roc_auc_score([0] * len(normal) + [1] * len(anomalous), s)


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0.01  # something was drawn


def test_mimii_report_files(tmp_path: Path) -> None:
    rows = mimii_rows(tmp_path / "data")
    summary = write_report(rows, tmp_path / "out", title="conv AE, mimii protocol", score_columns=("score", "score_int8"))
    out = tmp_path / "out"

    # DCASE score files: one folder per SNR, file,score without header, sorted by file name
    scores = read_rows(out / "score" / "6_dB" / "anomaly_score_fan_id_00.csv")
    assert scores == sorted(scores)
    assert len(scores) == 6
    # MIMII's normal/ and abnormal/ folders both hold 00000000.wav: the folder keeps the names apart
    assert dict(scores)["normal/00000000.wav"] == "0.1" and dict(scores)["abnormal/00000000.wav"] == "0.9"
    assert sorted(float(v) for _, v in scores) == sorted(SCORES[("id_00", 6.0)][0] + SCORES[("id_00", 6.0)][1])

    # result.csv in the DCASE 2020 baseline's shape
    result = read_rows(out / "score" / "-6_dB" / "result.csv")
    assert result[0] == ["fan"] and result[1] == ["id", "AUC", "pAUC"]
    assert result[2][0] == "00" and float(result[2][1]) == pytest.approx(expected_auc("id_00", -6.0))
    assert result[3][0] == "02" and float(result[3][1]) == pytest.approx(expected_auc("id_02", -6.0))
    assert result[4][0] == "Average"
    assert float(result[4][1]) == pytest.approx((expected_auc("id_00", -6.0) + expected_auc("id_02", -6.0)) / 2)

    # the int8 column is evaluated independently, in its own folder
    int8 = read_rows(out / "score_int8" / "6_dB" / "result.csv")
    assert float(int8[2][1]) == pytest.approx(expected_auc("id_00", 6.0, quantise=True))

    # JSON: per ID and per machine type, for each score column
    data = json.loads((out / "summary.json").read_text())
    assert data["title"] == "conv AE, mimii protocol" and data["n_clips"] == 24
    assert set(data["columns"]) == {"score", "score_int8"}
    groups = {(g["id"], g["snr_db"]): g for g in data["columns"]["score"]["groups"]}
    assert groups[("id_02", 6.0)]["auc"] == 1.0 and groups[("id_02", 6.0)]["pauc"] == 1.0
    assert groups[("id_00", -6.0)]["auc"] == pytest.approx(expected_auc("id_00", -6.0))
    assert groups[("id_00", -6.0)]["n_normal"] == 4 and groups[("id_00", -6.0)]["n_anomaly"] == 2
    machines = {m["snr_db"]: m for m in data["columns"]["score"]["machines"]}
    assert machines[-6.0]["mauc"] == pytest.approx(min(expected_auc("id_00", -6.0), expected_auc("id_02", -6.0)))
    assert summary.columns["score"].group("fan", "id_00", 6.0).auc == pytest.approx(expected_auc("id_00", 6.0))

    # markdown: seed 000's machine x SNR table shape
    md = (out / "report.md").read_text()
    assert "| Machine | SNR | AUC | pAUC | mAUC | Accuracy | Precision | Recall | F1-Score |" in md
    assert f"| fan | 6 dB | {machines[6.0]['auc']:.3f} |" in md
    assert md.index("| fan | 6 dB |") < md.index("| fan | -6 dB |")

    # plots: ROC curves and histograms per machine type and SNR, for each column
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == sorted(
        f"{col}_{kind}_fan_{snr}.png" for col in ("score", "score_int8") for kind in ("roc", "hist") for snr in ("6_dB", "-6_dB")
    )
    for p in (out / "plots").glob("*.png"):
        assert_png(p)
    assert all(p.exists() for p in summary.files) and (out / "summary.json") in summary.files


def test_dcase_sections_domains_and_unknown_clips(tmp_path: Path) -> None:
    def clip(name, domain, label):
        return Clip(path=tmp_path / "ToyCar/test" / name, machine="ToyCar", id="section_00", domain=domain,
                    split="test", label=label)

    rows = [
        {"clip": clip("s_n1.wav", "source", "normal"), "score": 0.1},
        {"clip": clip("s_n2.wav", "source", "normal"), "score": 0.2},
        {"clip": clip("t_n1.wav", "target", "normal"), "score": 0.7},
        {"clip": clip("t_n2.wav", "target", "normal"), "score": 0.8},
        {"clip": clip("s_a1.wav", "source", "anomaly"), "score": 0.5},
        {"clip": clip("t_a1.wav", "target", "anomaly"), "score": 0.9},
        {"clip": clip("eval.wav", None, "unknown"), "score": 5.0},  # scored, not evaluated
    ]
    summary = write_report(rows, tmp_path / "out", title="dcase", plots=False)
    (group,) = summary.columns["score"].groups
    assert (group.n_normal, group.n_anomaly, group.n_unknown) == (4, 2, 1)
    assert group.auc_source == 1.0 and group.auc_target == pytest.approx(0.5)
    assert group.auc == pytest.approx(roc_auc_score([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8, 0.5, 0.9]))
    official = summary.columns["score"].dcase2023_official_score
    assert official == pytest.approx(3 / (1 / 1.0 + 1 / 0.5 + 1 / group.pauc))
    scores = read_rows(tmp_path / "out" / "score" / "anomaly_score_ToyCar_section_00_test.csv")
    assert len(scores) == 7 and ["eval.wav", "5.0"] in scores
    result = read_rows(tmp_path / "out" / "score" / "result.csv")
    assert result[1] == ["section", "AUC", "pAUC", "AUC (source)", "AUC (target)", "AUC (source, within)",
                         "AUC (target, within)", "official score"]
    assert result[2][0] == "section_00" and float(result[2][3]) == 1.0 and float(result[2][4]) == 0.5
    # within-domain: source normals 0.1 0.2 < source anomaly 0.5; target normals 0.7 0.8 < target anomaly 0.9
    assert float(result[2][5]) == 1.0 and float(result[2][6]) == 1.0
    assert float(result[2][7]) == pytest.approx(official)  # one section: its score is the official score
    assert result[-1] == ["official score", repr(official)]
    assert group.domains is not None and group.domains.not_measurable == {}
    assert not (tmp_path / "out" / "plots").exists()


def _dcase_rows(root: Path, section: str, clips: list[tuple[str, str, float]]) -> list[dict]:
    return [{"clip": Clip(path=root / f"{section}_{k}.wav", machine="ToyCar", id=section, domain=d, split="test", label=lab),
             "score": s} for k, (d, lab, s) in enumerate(clips)]


def test_dcase_official_score_over_sections_and_not_measurable_reasons(tmp_path: Path) -> None:
    both = [("source", "normal", 0.1), ("source", "normal", 0.4), ("source", "anomaly", 0.3), ("target", "normal", 0.6),
            ("target", "normal", 0.2), ("target", "anomaly", 0.9), ("target", "anomaly", 0.5)]
    source_only = [("source", "normal", 0.2), ("source", "normal", 0.7), ("source", "anomaly", 0.5), ("source", "anomaly", 0.8)]
    rows = _dcase_rows(tmp_path, "section_00", both) + _dcase_rows(tmp_path, "section_01", both[:3] + [("target", "normal", 0.95)] + both[4:])

    def sk(clips, keep):
        """sklearn on the clips a definition selects: independent of trainer.metrics."""
        sel = [(lab == "anomaly", s) for d, lab, s in clips if keep(d, lab)]
        return roc_auc_score([a for a, _ in sel], [s for _, s in sel])

    col = evaluate_rows(rows)
    sections = [both, both[:3] + [("target", "normal", 0.95)] + both[4:]]
    values = []
    for g, clips in zip(col.groups, sections):
        src = sk(clips, lambda d, lab: d == "source" or lab == "anomaly")
        tgt = sk(clips, lambda d, lab: d == "target" or lab == "anomaly")
        pa = roc_auc_score([lab == "anomaly" for _, lab, _ in clips], [s for *_, s in clips], max_fpr=0.1)
        assert (g.domains.auc_source, g.domains.auc_target, g.domains.pauc) == pytest.approx((src, tgt, pa))
        assert g.domains.auc_target_within == pytest.approx(sk(clips, lambda d, lab: d == "target"))
        assert g.domains.score == pytest.approx(3 / (1 / src + 1 / tgt + 1 / pa))
        values += [src, tgt, pa]
    assert col.groups[0].domains.auc_target != pytest.approx(col.groups[1].domains.auc_target)  # the sections differ
    # official score: harmonic mean of the six values pooled (DCASE 2023 evaluator), not a mean of means
    assert col.dcase2023_official_score == pytest.approx(len(values) / sum(1 / v for v in values))
    assert col.dcase_by_machine["ToyCar"].auc_source == pytest.approx((values[0] + values[3]) / 2)

    # A third section tested on the source domain only (our ToyCar copy): no target AUC, no official score.
    rows += _dcase_rows(tmp_path, "section_02", source_only)
    write_report(rows, tmp_path / "out", title="dcase", plots=False)
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    column = data["columns"]["score"]
    assert column["dcase2023_official_score"] is None
    assert column["dcase_overall"]["not_measurable"]["score"].startswith(
        "ToyCar/section_02: needs AUC (target) (no target-domain normal clips)")
    g2 = column["groups"][2]["domains"]
    assert g2["auc_source"] == roc_auc_score([0, 0, 1, 1], [0.2, 0.7, 0.5, 0.8]) and g2["auc_target"] is None
    result = read_rows(tmp_path / "out" / "score" / "result.csv")
    assert result[4][:5] == ["section_02", "0.75", repr(g2["pauc"]), "0.75", ""]
    assert result[5][0] == "Average" and result[5][4] == ""  # no mean over the sections that happen to have it
    assert result[-1][:2] == ["official score", ""] and "no target-domain normal clips" in result[-1][2]
    md = (tmp_path / "out" / "report.md").read_text()
    # columns: AUC, pAUC, AUC (source), AUC (target), within source, within target, score
    assert f"| ToyCar | section_02 | n/a | 2 | 2 | 0.750 | {g2['pauc']:.3f} | 0.750 | n/a | 0.750 | n/a | n/a |" in md
    assert "- ToyCar/section_02: AUC (target) not measurable: no target-domain normal clips" in md
    assert "DCASE official score: not measurable (ToyCar/section_02" in md
    assert "nan" not in md.lower() and "nan" not in (tmp_path / "out" / "score" / "result.csv").read_text().lower()


DCASE2023_TOYCAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dcase2023-toycar"


def test_real_dcase2023_toycar_clips_carry_domains() -> None:
    """Reader level: the clips of our DCASE 2023 ToyCar copy carry the domain the metrics need."""
    if not DCASE2023_TOYCAR.is_dir():
        pytest.skip(f"{DCASE2023_TOYCAR} is absent (see ../shared/data/README.md): no real DCASE 2023 clips to read")
    from trainer.datasets import read_dataset
    from trainer.metrics import domain_metrics

    test = [c for c in read_dataset(DCASE2023_TOYCAR, layout="auto") if c.split == "test"]
    assert test and all(c.domain in ("source", "target") and c.id == "section_00" for c in test)
    counts = {(d, lab): sum(c.domain == d and c.label == lab for c in test) for d in ("source", "target") for lab in ("normal", "anomaly")}
    assert counts[("source", "normal")] > 0 and counts[("source", "anomaly")] > 0
    # Scores from the file name's own label: the point is which figures the domains allow, not a model.
    m = domain_metrics([c.is_anomaly for c in test], [float(c.is_anomaly) for c in test], [c.domain for c in test])
    assert m.auc_source == 1.0
    if counts[("target", "normal")] == 0:  # our copy: the source test set only
        assert m.auc_target is None and m.not_measurable["auc_target"] == "no target-domain normal clips" and m.score is None
    else:
        assert m.score == 1.0


def test_single_class_groups_report_na(tmp_path: Path) -> None:
    rows = [ScoredRow(clip=Clip(path=tmp_path / f"normal/{k}.wav", machine="site", label="normal"), score=float(k))
            for k in range(3)]
    summary = evaluate_rows(rows)
    assert summary.groups[0].auc is None and summary.machines[0].mauc is None
    write_report(rows, tmp_path / "out", title="normal only", plots=True)
    assert read_rows(tmp_path / "out" / "score" / "result.csv")[2] == ["all", "", ""]
    assert "| site | n/a | n/a |" in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["columns"]["score"]["groups"][0]["auc"] is None


def test_report_errors(tmp_path: Path) -> None:
    rows = mimii_rows(tmp_path)
    with pytest.raises(ParameterError, match="scored more than once"):
        write_report(rows + rows[:1], tmp_path / "o", title="t")
    with pytest.raises(ParameterError, match="no score column 'score_tflite'"):
        write_report(rows, tmp_path / "o", title="t", score_columns=("score_tflite",))
    with pytest.raises(ParameterError, match="file-name safe"):
        write_report(rows, tmp_path / "o", title="t", score_columns=("../x",))
    nan = [ScoredRow(clip=rows[0].clip, score=float("nan"))]
    with pytest.raises(ParameterError, match="cannot be scored"):
        write_report(nan, tmp_path / "o", title="t")
    with pytest.raises(ParameterError, match="no scored rows"):
        write_report([], tmp_path / "o", title="t")
