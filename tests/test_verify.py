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
from scratchnets.profile.papers import ROWS, SEEDS_TABLE, ModelConfig, PaperRow

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


def test_se_scale_multiplies_are_the_gated_elements():
    """macs_se_scale adds one multiply per element an SE gate scales: for MobileNetV3-Small at
    224 px, 16 channels at 56x56, five gated blocks at 14x14 (96 + 240 + 240 + 120 + 144
    channels) and three at 7x7 (288 + 576 + 576), counted by hand from [V3] Table 2."""
    small = ModelConfig("mobilenet_v3_small")
    row = next(r for r in ROWS if r.key == "V3-T3-small-1-macs")
    gated = 16 * 56**2 + (96 + 240 + 240 + 120 + 144) * 14**2 + (288 + 576 + 576) * 7**2
    assert COUNTER.count(row, small) == COUNTER.summary(small).total_macs + gated == 56_795_776
    v2 = ModelConfig("mobilenet_v2")  # no SE: nothing added
    assert COUNTER.count(row, v2) == COUNTER.summary(v2).total_macs


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
    monkeypatch.setattr(papers, "SEEDS_TABLE", ())
    assert main(["verify"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


# ------------------------------------------------------------------------ the seeds' table

#: issue 5's list: model, alpha, rho, input pixels, then the verdicts of the published parameters
#: and multiply-adds ("computed": papers.md has no number for that configuration)
SEEDS = [
    ("MobileNetV1", 1.0, "1", 224, "match", "match"),
    ("MobileNetV1", 0.75, "0.85", 192, "match", "erratum"),
    ("MobileNetV1", 0.25, "0.57", 128, "match", "match"),
    ("MobileNetV2", 1.4, "1", 224, "match", "match"),
    ("MobileNetV2", 1.0, "1", 224, "match", "match"),
    ("MobileNetV2", 0.35, "0.43", 96, "match", "match"),
    ("Xception", 1.0, "1", 299, "match", "computed"),
    ("VGG16", 1.0, "1", 224, "match", "erratum"),
]
MODEL_NAMES = {"MobileNetV1": "mobilenet_v1", "MobileNetV2": "mobilenet_v2",
               "Xception": "xception", "VGG16": "vgg16"}  # fmt: skip


def test_seeds_table_is_the_seeds_eight_configurations():
    """The eight configurations of issue 5, each citing rows of exactly that configuration."""
    listed = [(e.model, e.config.width, e.rho, e.config.resolution) for e in SEEDS_TABLE]
    assert listed == [seed[:4] for seed in SEEDS]
    assert len({e.key for e in SEEDS_TABLE}) == len(SEEDS_TABLE)
    by_key = {row.key: row for row in ROWS}
    for e in SEEDS_TABLE:
        assert e.config.name == MODEL_NAMES[e.model] and e.config.classes == 1000
        native = 299 if e.model == "Xception" else 224
        assert abs(e.config.resolution / native - float(e.rho)) < 0.01
        for key, quantity in ((e.params, "params"), (e.macs, "macs")):
            if key is None:
                continue
            row = by_key[key]  # slim rows count 1001 classes: the class count may differ
            assert row.quantity == quantity
            same = ("name", "width", "resolution", "options")
            assert [getattr(row.config, f) for f in same] == [getattr(e.config, f) for f in same]


@pytest.mark.parametrize(
    "entry, seed", zip(SEEDS_TABLE, SEEDS, strict=True), ids=[e.key for e in SEEDS_TABLE]
)
def test_seeds_table_row(entry, seed):
    result = verify.verify_seed(entry, COUNTER)
    assert tuple(cell.verdict for cell in result.cells) == seed[4:]
    for cell in result.cells:
        if cell.verdict == "computed":  # our count only: nothing published, nothing verified
            assert cell.verified is None and cell.published_text() == "-" and cell.ours > 0
            assert "verified against nothing" in cell.explanation(entry)
        else:  # the cited row's own verdict and count
            assert cell.verified.how in ("rounded", "truncated")
            assert cell.ours == cell.verified.ours
            assert cell.verified == verify.verify_row(cell.verified.row, COUNTER)


def test_seeds_table_tally_counts_computed_apart():
    seeds = verify.verify_seeds(counter=COUNTER)
    assert verify.seed_tally(seeds) == {"match": 13, "erratum": 2, "computed": 1, "MISMATCH": 0}
    # a quantity without a cited row is computed (parameters: trainable), never a match
    vgg = next(e for e in SEEDS_TABLE if e.model == "VGG16")
    computed = verify.verify_seed(replace(vgg, params=None), COUNTER)
    assert computed.params.verdict == "computed" and computed.ok
    assert computed.params.ours == 138_357_544  # VGG16 has no BN: trainable == Keras total
    assert verify.seed_tally([computed])["match"] == 0


def test_cli_verify_seeds_table(capsys, monkeypatch):
    assert main(["verify", "--only", "seed-table", "--wide"]) == 0  # one line per configuration
    out = capsys.readouterr().out
    assert "published numbers:" not in out  # no row of the main table matches
    assert (
        "Seeds' table: 8 configurations, 16 numbers: 13 match, 2 documented errata, 1 computed"
        in out
    )
    xception = next(line for line in out.splitlines() if line.startswith("Xception"))
    assert "22,910,480 [keras-table-old]" in xception and " - " in xception
    assert "match / computed [s" in xception
    assert main(["verify", "--json", "--only", "seed-table"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"] == []
    table = data["seeds_table"]
    assert table["summary"] == {"match": 13, "erratum": 2, "computed": 1, "MISMATCH": 0,
                                "configurations": 8, "total": 16}  # fmt: skip
    macs = next(r for r in table["rows"] if r["model"] == "Xception")["macs"]
    assert macs["verdict"] == "computed" and macs["published"] is None and macs["ours"] > 0
    assert main(["verify", "--markdown", "--only", "seed-table-vgg16"]) == 0
    out = capsys.readouterr().out
    assert "| Model | alpha |" in out and "138,357,544 [keras-table-old]" in out
    # a wrong cited number makes the seeds' table, and the command, fail
    wrong = replace(next(r for r in ROWS if r.key == "V1-T6-1.0-macs"), published="570")
    monkeypatch.setattr(papers, "ROWS", tuple(wrong if r.key == wrong.key else r for r in ROWS))
    assert main(["verify", "--only", "seed-table-v1-1.0", "--wide"]) == 1
    assert "match / MISMATCH [s1]" in capsys.readouterr().out


def test_the_default_report_fits_120_columns_with_units_and_open_citations(capsys):
    """Every line within 120 characters; each published number's row names its paper with the
    arXiv id; ours and the difference carry the published value's unit; no citation of a file
    the user does not have. ``--wide`` keeps the one-line-per-row table."""
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 120
    assert "papers.md" not in out
    lines = out.splitlines()
    first = next(k for k, line in enumerate(lines) if line.startswith("[V1] Table 6 "))
    assert lines[first + 1].startswith("arXiv 1704.04861")
    assert "569 M" in lines[first] and "568.7 M" in lines[first] and "-0.3 M" in lines[first]
    share = next(line for line in lines if line.startswith("[V1] Table 2 ") and "%" in line)
    assert share.count("%") == 3  # published, ours, difference
    assert main(["verify", "--wide", "--only", "V1-T6-1.0-macs"]) == 0
    wide = capsys.readouterr().out
    assert "Config" in wide.splitlines()[0] and max(map(len, wide.splitlines())) > 120
