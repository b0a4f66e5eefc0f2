"""The report's explanation sections: baselines with confidence intervals, faithfulness, sanity, robustness."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch

from visiondistill.core.errors import ConfigError
from visiondistill.reporting.document import Heading, Paragraph, Table, to_markdown
from visiondistill.reporting.sections.context import SectionContext
from visiondistill.reporting.sections.explanations import ExplanationSettings, bootstrap_ci, explanation_sections


def _run(name: str, role: str, terms: tuple[str, ...] = ()) -> SimpleNamespace:
    """A run whose GradCAMCallback explains stage -3 (4×4 at 32 px; the last stage of test_resnet is 1×1)."""
    cam = {"class_path": "visiondistill.explain.GradCAMCallback", "init_args": {"layers": -3}}
    callbacks = [cam] + [{"class_path": f"visiondistill.distill.{term}"} for term in terms]

    def find(class_name: str | None = None) -> list[dict]:
        return [c for c in callbacks if class_name is None or c["class_path"].endswith(f".{class_name}")]

    return SimpleNamespace(name=name, role=role, callbacks=find)


def _network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=4).eval()


def _context(tmp_path: Path, runs: list, log: list) -> SectionContext:
    modules = {
        run.name: SimpleNamespace(student=_network(i), saliency_adapter="classification") for i, run in enumerate(runs)
    }
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = (images, torch.zeros(6, dtype=torch.long))
    return SectionContext(runs, modules, None, batch, {}, tmp_path, log.append)


SETTINGS = ExplanationSettings(methods=("gradcam",), images=2, bootstrap=100, sensitivity_samples=2)


def _tables_after(blocks: list, heading: str) -> Table:
    index = next(i for i, b in enumerate(blocks) if isinstance(b, Heading) and b.text.startswith(heading))
    return next(b for b in blocks[index:] if isinstance(b, Table))


def test_agreement_on_a_scale_with_floor_ceiling_and_seed_rows(tmp_path) -> None:
    runs = [
        _run("teacher", "teacher"),
        _run("scratch_a", "scratch"),
        _run("scratch_b", "scratch"),
        _run("kd", "distilled", ("LogitDistillation",)),
    ]
    context = _context(tmp_path, runs, [])
    twin = ("teacher_twin", copy.deepcopy(context.network(runs[0])))
    settings = ExplanationSettings(
        methods=("gradcam",), bootstrap=100, faithfulness=False, sanity=False, robustness=False
    )
    rows = {row["model"]: row for row in _tables_after(explanation_sections(context, settings, twin), "Agreement").rows}
    # An identical second teacher agrees exactly: the ceiling's interval collapses onto 1.
    assert rows["ceiling (teacher_twin)"]["pearson"] == "1.000 [1.000, 1.000]"
    assert rows["floor (random scratch_a)"]["role"] == "floor"
    assert rows["floor (random scratch_a)"]["pearson"] != rows["scratch_a"]["pearson"]  # re-initialised, not a copy
    assert rows["scratch_a"]["pearson"] != rows["scratch_b"]["pearson"]
    seeds = rows["scratch: no distillation (2 runs)"]
    assert seeds["role"] == "mean ± std over runs" and "±" in seeds["pearson"]
    assert "kd" in rows and not any("distilled:" in name for name in rows)  # one KD run: no seed row


def test_faithfulness_sanity_and_robustness_per_model(tmp_path) -> None:
    log: list[str] = []
    context = _context(tmp_path, [_run("teacher", "teacher"), _run("kd", "distilled")], log)
    blocks = explanation_sections(context, SETTINGS)
    headings = [b.text for b in blocks if isinstance(b, Heading)]
    for title in ("Agreement with the teacher on a scale", "Faithfulness", "Sanity check", "Robustness"):
        assert any(h.startswith(title) and h.endswith("`gradcam`") for h in headings), title
    faithfulness = _tables_after(blocks, "Faithfulness").rows
    assert [row["model"] for row in faithfulness] == ["teacher", "kd", "floor (random kd)"]  # not the mirrored one
    assert all(re.fullmatch(r"-?[0-9.]+ \[-?[0-9.]+, -?[0-9.]+\]", row["deletion_auc"]) for row in faithfulness)
    sanity = _tables_after(blocks, "Sanity check").rows
    assert [row["model"] for row in sanity] == ["teacher", "kd"]
    assert sanity[0]["check"] == "passed"  # the teacher's 4×4 Grad-CAM changes once its blocks are random
    # The untrained student's maps of these two images are all zero: nothing to check.
    assert sanity[1]["check"] in ("passed", "FLAGGED: maps survive randomisation", "n/a: the trained maps are constant")
    assert all(row["blocks"] > 1 for row in sanity)
    robustness = _tables_after(blocks, "Robustness").rows
    assert [row["model"] for row in robustness] == ["teacher", "kd"] and "pgd_spearman" in robustness[0]
    assert "ε = 0.03" in to_markdown(blocks)
    assert any(line.startswith("   explanations with gradcam:") for line in log)


def test_mirrored_teacher_is_the_default_ceiling_and_no_teacher_means_no_agreement(tmp_path) -> None:
    # A Captum method this time, agreement only.
    settings = ExplanationSettings(
        methods=("integrated_gradients",), bootstrap=50, faithfulness=False, sanity=False, robustness=False
    )
    context = _context(tmp_path, [_run("teacher", "teacher"), _run("kd", "distilled")], [])
    rows = _tables_after(explanation_sections(context, settings), "Agreement").rows
    assert [row["model"] for row in rows] == ["kd", "floor (random kd)", "ceiling (teacher, mirrored)"]
    alone = explanation_sections(_context(tmp_path, [_run("scratch", "scratch")], []), settings)
    assert not any(isinstance(b, Heading) and "Agreement" in b.text for b in alone)
    assert any(isinstance(b, Paragraph) for b in alone)


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    values = torch.randn(400, generator=torch.Generator().manual_seed(1))
    mean, low, high = bootstrap_ci(values, resamples=4000, seed=2)
    half = 1.96 * float(values.std()) / math.sqrt(len(values))
    assert mean == pytest.approx(float(values.mean()))
    assert (high - low) / 2 == pytest.approx(half, rel=0.1) and low < mean < high
    assert all(math.isnan(v) for v in bootstrap_ci(torch.tensor([float("nan")])))
    assert bootstrap_ci(torch.tensor([2.0, float("nan"), 2.0])) == (2.0, 2.0, 2.0)


def test_cells_never_show_a_negative_zero() -> None:
    from visiondistill.reporting.sections.explanations import _cell

    # -0.0001 rounds to "-0.000" with plain formatting: the browser check of the report showed such cells.
    cell = _cell(torch.tensor([-0.0001, -0.0002, -0.0001]), ExplanationSettings(bootstrap=50))
    assert cell == "0.000 [0.000, 0.000]"
    assert _cell(torch.tensor([-0.5, -0.5]), ExplanationSettings(bootstrap=50)) == "-0.500 [-0.500, -0.500]"


def test_settings_name_unknown_methods() -> None:
    with pytest.raises(ConfigError, match="'magic'.*integrated_gradients"):
        ExplanationSettings(methods=("magic",))
    with pytest.raises(ConfigError, match="at least one"):
        ExplanationSettings(methods=())


# About a minute on 2 CPU cores (faithfulness and sanity checks over every run of the demo): `make test-all` runs it;
# the sections themselves are checked quickly by test_faithfulness_sanity_and_robustness_per_model.
@pytest.mark.slow
def test_report_has_the_explanation_sections(quick_classification_demo, tmp_path) -> None:
    from visiondistill.reporting import write_report

    runs = quick_classification_demo / "runs" / "classification"
    folders = [runs / "teacher", runs / "student_scratch", runs / "student_kd"]
    settings = ExplanationSettings(methods=("gradcam", "occlusion"), images=2, bootstrap=50, sensitivity_samples=2)
    markdown, page = write_report(
        folders, tmp_path / "out", num_images=4, model_cards=False, explanations=settings, log=lambda *_: None
    )
    text, html = markdown.read_text(), page.read_text()
    assert "## Explanations: agreement on a scale, faithfulness, sanity, robustness" in text
    for method in settings.methods:
        for title in ("Agreement with the teacher on a scale", "Faithfulness", "Sanity check", "Robustness"):
            assert re.search(rf"^### {title}.* — `{method}`$", text, flags=re.MULTILINE), (title, method)
    assert "ceiling (teacher, mirrored)" in text and "floor (random student_scratch)" in text
    assert "Faithfulness" in html and "ceiling (teacher, mirrored)" in html
    plain, _ = write_report(folders, tmp_path / "plain", num_images=4, model_cards=False, explanations=False)
    assert "## Explanations" not in plain.read_text()


@pytest.mark.slow
def test_a_segmentation_report_explains_the_class_region_and_asks_for_a_second_teacher(tmp_path) -> None:
    from visiondistill.models.segmenters import create_segmenter

    from ..support.segmentation import TINY_STUDENT, TINY_TEACHER, square_masks

    torch.manual_seed(0)
    runs = [_run("teacher", "teacher"), _run("student", "distilled")]
    networks = {"teacher": create_segmenter(TINY_TEACHER, 3), "student": create_segmenter(TINY_STUDENT, 3)}
    modules = {
        name: SimpleNamespace(student=net.eval(), saliency_adapter="segmentation") for name, net in networks.items()
    }
    images, masks = square_masks(n=2).tensors
    context = SectionContext(runs, modules, None, (images, masks), {}, tmp_path, lambda *_: None)
    settings = ExplanationSettings(methods=("integrated_gradients",), images=2, bootstrap=50, sensitivity_samples=1)
    settings.attribution_options = {"n_steps": 2}
    blocks = explanation_sections(context, settings)
    notes = " ".join(b.text for b in blocks if isinstance(b, Paragraph))
    assert "No ceiling" in notes and "--ceiling" in notes
    rows = _tables_after(blocks, "Agreement").rows
    assert [row["model"] for row in rows] == ["student", "floor (random student)"]
    faithfulness = _tables_after(blocks, "Faithfulness").rows
    assert faithfulness[0]["road_combined"] != "–" and len(faithfulness) == 3


def test_a_measure_that_fails_leaves_the_other_tables(tmp_path, monkeypatch) -> None:
    from visiondistill.reporting.sections import explanations

    def broken(*args, **kwargs):
        raise RuntimeError("no scalar target")

    monkeypatch.setattr(explanations, "_faithfulness_blocks", broken)
    log: list[str] = []
    context = _context(tmp_path, [_run("teacher", "teacher"), _run("kd", "distilled")], log)
    settings = ExplanationSettings(methods=("gradcam",), images=2, bootstrap=20, sanity=False, robustness=False)
    blocks = explanation_sections(context, settings)
    assert _tables_after(blocks, "Agreement").rows
    assert not any(isinstance(b, Heading) and b.text.startswith("Faithfulness") for b in blocks)
    assert "   an explanation table with gradcam not written: RuntimeError: no scalar target" in log
