"""``scratchnets verify``: every published number as its own test, and the judging rules.

Each row of ``papers.ROWS`` must reproduce within its printed precision, or be a documented
erratum whose correction reproduces. The rules themselves are tested on rows that must fail.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from scratchnets.cli import main
from scratchnets.profile import papers, verify
from scratchnets.profile.papers import ROWS, ModelConfig, PaperRow

COUNTER = verify.Counter()  # one build and one trace per configuration for the whole module


@pytest.mark.parametrize("row", ROWS, ids=[row.key for row in ROWS])
def test_published_row(row: PaperRow):
    result = verify.verify_row(row, COUNTER)
    assert result.verdict in ("match", "erratum"), result.explanation()
    assert result.how in ("rounded", "truncated")
    if result.verdict == "erratum":
        e = row.erratum
        assert e is not None and e.documented and e.note
        assert (e.corrected, e.config, e.quantity) != (None, None, None)
        # the number as printed really does not reproduce: the erratum is needed
        assert verify.rounding_match(row, result.ours) is None


def test_row_keys_are_unique_and_conventions_known():
    keys = [row.key for row in ROWS]
    assert len(keys) == len(set(keys))
    conventions = set(verify.CONVENTIONS) | {"macs"}
    assert all(row.convention in conventions for row in ROWS)
    assert all(row.source in papers.SOURCES for row in ROWS)


def _row(published: str, unit: str = "M") -> PaperRow:
    return PaperRow("t", "V1", "test", "test", ModelConfig("mobilenet_v1"), "macs", published, unit)


@pytest.mark.parametrize(
    "published, ours, expected",
    [
        ("569", 568_740_352, "rounded"),
        ("290", 290_676_224, "truncated"),  # [V1] Table 7 truncates
        ("291", 290_676_224, "rounded"),  # [slim-V1] rounds the same count
        ("289", 290_676_224, None),
        ("292", 290_676_224, None),
        ("4.2", 4_209_088, "rounded"),
        ("4.3", 4_209_088, None),
        ("3,504,872", 3_504_872, "rounded"),
        ("3,504,871", 3_504_872, None),
    ],
)
def test_rounding_rule(published, ours, expected):
    row = _row(published, "" if "," in published else "M")
    assert verify.rounding_match(row, ours) == expected


def test_wrong_numbers_are_mismatches():
    """A row with a wrong value, or an erratum whose correction is wrong, must fail."""
    v1 = next(r for r in ROWS if r.key == "V1-T6-1.0-macs")
    assert verify.verify_row(replace(v1, published="570"), COUNTER).verdict == "MISMATCH"
    typo = next(r for r in ROWS if r.key == "V1-T2-macs-conv 3x3")
    bad_fix = replace(typo, erratum=replace(typo.erratum, corrected="1.81"))
    assert verify.verify_row(bad_fix, COUNTER).verdict == "MISMATCH"
    seed = next(r for r in ROWS if r.key == "seed-separable-ratio")
    assert verify.verify_row(replace(seed, published="0.125"), COUNTER).verdict == "MISMATCH"


def test_table_builders_agree_with_the_models():
    """[V1] Table 1 (stride fixed) and [V2] Table 2 built as printed count exactly like the
    timm / torchvision-style models; Table 1 as printed does not reach 569 M."""
    fixed = ModelConfig("v1_table1", options=(("strides", ((papers.V1_TABLE1_TYPO, 1),)),))
    assert COUNTER.summary(fixed).total_macs == 568_740_352
    assert COUNTER.summary(ModelConfig("v1_table1")).total_macs < 540e6
    v2 = COUNTER.summary(ModelConfig("v2_table2"))
    assert v2.total_macs == COUNTER.summary(ModelConfig("mobilenet_v2")).total_macs
    for width in (0.35, 1.4):
        built = COUNTER.model(ModelConfig("v2_table2", width, classes=1001))[0]
        model = COUNTER.model(ModelConfig("mobilenet_v2", width, classes=1001))[0]
        assert verify.count_params(built, "slim") == verify.count_params(model, "slim")


def test_cli_verify(capsys, monkeypatch):
    assert main(["verify", "--only", "V1-T2"]) == 0
    out = capsys.readouterr().out
    assert "erratum" in out and "1.91" in out and "Conventions:" in out
    assert main(["verify", "--json", "--only", "slim-V2-1-224"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["total"] == 2 and data["summary"]["MISMATCH"] == 0
    assert main(["verify", "--markdown", "--only", "Keras VGG16"]) == 0
    assert "| --- |" in capsys.readouterr().out
    wrong = replace(next(r for r in ROWS if r.key == "V1-T6-1.0-macs"), published="570")
    monkeypatch.setattr(papers, "ROWS", (wrong,))
    assert main(["verify"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
