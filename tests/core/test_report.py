"""experiments.report / experiments.demo's report on a hand-written run directory (no training):
the figures exist and report.html is one self-contained page with every figure inline."""

import base64
import json
import re

import numpy as np
import pytest

from experiments import report
from experiments.sections import (
    Demo,
    by_paper,
    config_label,
    core_groups,
    demos,
    longest_first,
    section,
    stage_runs,
)

PNG = b"\x89PNG\r\n\x1a\n"
RADFM = Demo(
    paper="radfm",
    name="fm",
    module="configs.radfm",
    arg="tiny",
    metrics=("accuracy", "bleu4", "disorder_named", "distinct"),
    splits=("diagnosis_open", "caption"),
    baseline=True,
    samples=("caption",),
)
RP3D = Demo(
    paper="rp3d_diag",
    name="diag",
    module="configs.rp3d_diag",
    arg="tiny",
    metrics=("auc", "ap"),
    splits=("all", "head", "medium", "tail"),
)


def _run_dir(tmp_path):
    run = tmp_path / "fm"
    run.mkdir()
    rows = [{"step": s, "train/loss": 5.0 / s, "train/lr": 1e-4} for s in (1, 50, 100)]
    rows.append({"step": 100, "eval/caption/bleu4": 0.3})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval").mkdir()
    samples = [
        {"prediction": "Finding: CT of the chest.", "reference": "Finding: MRI of the head."},
        {"prediction": "Normal study.", "reference": "Normal study."},
    ]
    trained = {
        "step": 100,
        "diagnosis_open/accuracy": 0.5,
        "caption/bleu4": 0.3,
        "caption/disorder_named": 0.6,
        "caption/distinct": 1.0,
        "baseline/diagnosis_open/accuracy": 0.25,
        "baseline/caption/bleu4": 0.1,
        "baseline/caption/disorder_named": 0.25,
        "baseline/caption/distinct": 0.05,
        "samples/caption": samples,
    }
    (run / "eval" / "100.json").write_text(json.dumps(trained))
    (run / "eval" / "20.json").write_text(json.dumps({"caption/bleu4": 0.0}))
    return run


def _inline_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_radfm_section_writes_bars_curves_panels_and_a_self_contained_html(tmp_path):
    run = _run_dir(tmp_path)
    trained = report.latest_eval(str(run))
    assert trained["step"] == 100  # newest by number, not by name
    volumes = [np.random.default_rng(0).random((4, 8, 8)), np.ones((1, 8, 8))]
    blocks = section(
        RADFM,
        str(tmp_path),
        report.read_metrics(str(run)),
        trained,
        {"diagnosis_open/accuracy": 0.0, "caption/bleu4": 0.0},
        "intro **text**",
        lambda task, rows: [volumes[i] for i in rows],
    )
    md_path, html_path = report.write_report([("heading", 1, "t"), *blocks], str(tmp_path), "t")
    figures = [b[1] for b in blocks if b[0] == "figure"]
    assert figures == ["fm_loss.png", "fm_metrics.png", "fm_samples_caption.png"]
    for name in figures:
        assert (tmp_path / name).read_bytes().startswith(PNG)
    md = open(md_path).read()
    assert all(f"]({name})" in md for name in figures)
    assert "| trained | caption | 0.3000 | n/a |" not in md  # accuracy is not a caption metric
    assert "| most frequent answer | caption | n/a | 0.1000 | 0.2500 | 0.0500 |" in md
    assert "- generated: Finding: CT of the chest." in md
    page = open(html_path).read()
    assert page.startswith("<!DOCTYPE html>") and "<b>text</b>" in page
    assert 'src="fm_' not in page  # nothing refers to a file beside the page
    inline = _inline_pngs(page)
    assert inline == [(tmp_path / name).read_bytes() for name in figures]
    assert "<td>most frequent answer</td>" in page


def test_rp3d_section_draws_roc_curves_only_when_the_eval_has_them(tmp_path):
    run = tmp_path / "diag"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 0.7}) + "\n")
    grid = [0.0, 0.5, 1.0]
    trained = {"auc": 0.9, "head/auc": 0.95, "tail/auc": 0.7, "roc/fpr": grid}
    trained.update({f"roc/{s}": [0.0, 0.9, 1.0] for s in ("all", "head", "tail")})
    blocks = section(RP3D, str(tmp_path), report.read_metrics(str(run)), trained, {}, "")
    assert [b[1] for b in blocks if b[0] == "figure"] == [
        "diag_loss.png",
        "diag_metrics.png",
        "diag_roc.png",
    ]
    assert (tmp_path / "diag_roc.png").read_bytes().startswith(PNG)
    no_roc = section(RP3D, str(tmp_path), [], {"auc": 0.9}, {}, "")
    assert "diag_roc.png" not in [b[1] for b in no_roc if b[0] == "figure"]


def test_metric_values_and_mid_slices():
    values = {"auc": 0.5, "head/auc": float("nan"), "tail/ap": None, "head/count": 3}
    assert report.metric_value(values, "all", "auc") == 0.5
    assert report.metric_value(values, "head", "auc") is None  # NaN: not drawn, "n/a"
    assert report.metric_value(values, "tail", "ap") is None
    volume = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    np.testing.assert_array_equal(report.mid_slices(volume), np.concatenate(volume[1:4], axis=1))
    assert report.mid_slices(volume[:1]).shape == (2, 3)
    with pytest.raises(ValueError, match="block kind"):
        report.to_markdown([("video", "x")])


def test_demo_stages_chain_each_run_onto_the_previous_workdir(tmp_path):
    """RadFM's demo trains the lesion stage (2D open diagnosis only), then open + closed
    diagnosis, then every task, each starting from the previous workdir, all on one root."""
    (section_demo,) = demos(("radfm",))
    runs = stage_runs(section_demo, str(tmp_path))
    assert [name for name, _, _ in runs] == ["radfm_lesions", "radfm_diagnosis", "radfm"]
    (_, lesion_dir, lesions), (_, diagnosis_dir, diagnosis), (_, final_dir, final) = runs
    assert lesions.data.phantom_tasks == ("diagnosis_open",)
    assert diagnosis.data.phantom_tasks == ("diagnosis_open", "diagnosis_closed")
    assert final.data.phantom_tasks == ()  # every task
    assert lesions.init_from.workdir == ""
    assert diagnosis.init_from.workdir == lesion_dir == str(tmp_path / "radfm_lesions")
    assert final.init_from.workdir == diagnosis_dir == str(tmp_path / "radfm_diagnosis")
    assert final_dir == str(tmp_path / "radfm")
    assert {c.data.root for _, _, c in runs} == {str(tmp_path / "data" / "radfm")}
    assert config_label(section_demo, "radfm_lesions") == "configs.radfm:tiny,stage=lesions"
    assert config_label(section_demo, "radfm") == "configs.radfm:tiny"
    # a one-stage section trains only its own config, from scratch
    (only,) = stage_runs(RP3D, str(tmp_path))
    assert only[0] == "diag" and only[2].init_from.workdir == ""


def test_rp3d_knowledge_section_starts_from_the_late_runs_trunk(tmp_path):
    """Tiny KE from scratch collapses (no per-class bias); its section reuses the late-fusion
    section's run dir as its first stage and takes only the trunk from it."""
    late, ke = demos(("rp3d_diag",))
    (late_name, late_dir, _), (ke_name, _, ke_config) = stage_runs(ke, str(tmp_path))
    assert late_name == late.name and late_dir == str(tmp_path / late.name)  # already trained
    assert ke_name == "rp3d_diag_late_ke" and ke_config.model.ke.enabled
    assert ke_config.init_from.workdir == late_dir and ke_config.init_from.include == "trunk/.*"


def test_radfm_stage_argument_needs_the_tiny_recipe():
    from configs import radfm

    with pytest.raises(ValueError, match="stage=lesions is a stage of the tiny recipe"):
        radfm.get_config("stage=lesions")
    with pytest.raises(ValueError, match="choose one of all, lesions, diagnosis"):
        radfm.get_config("tiny,stage=warm")
    lesions = radfm.get_config("tiny,stage=lesions,tasks=diagnosis_open+diagnosis_closed")
    assert lesions.data.phantom_tasks == ("diagnosis_open", "diagnosis_closed")
    assert lesions.train.steps == radfm.TINY_STAGES["lesions"][1] == 3000


def test_demo_groups_sections_by_paper_and_starts_the_longest_paper_first():
    """Papers run side by side (``experiments.demo --jobs``): a paper's sections stay together
    in report order (RP3D's knowledge section resumes the late run), and RadFM, the longest
    measured paper, is started first."""
    every = demos(("llava_med", "radfm", "rp3d_diag", "uni_med"))
    groups = by_paper(every)
    assert [[d.name for d in g] for g in groups] == [
        ["llava_med"],
        ["radfm"],
        ["rp3d_diag_late", "rp3d_diag_late_ke"],
        ["uni_med"],
    ]
    order = longest_first(groups)
    assert groups[order[0]][0].paper == "radfm"
    assert sorted(order) == [0, 1, 2, 3]
    assert longest_first([[Demo("a", "a", "m", "", (), (), minutes=1.0)]] * 2) == [0, 1]


def test_demo_workers_get_disjoint_neighbouring_cores():
    """Each side-by-side paper process is bound to its own cores: every core in exactly one
    group, groups as even as the count allows; more jobs than cores share them round-robin."""
    assert core_groups([1, 0], 2) == [[0], [1]]
    assert core_groups(list(range(16)), 2) == [list(range(8)), list(range(8, 16))]
    assert core_groups(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert core_groups([0, 1], 3) == [[0], [1], [0]]
    assert core_groups([4, 6], 1) == [[4, 6]]
    with pytest.raises(ValueError, match="jobs"):
        core_groups([0], 0)
