"""`visiondistill report` on multi-task runs: per-head metrics, the teachers of the heads, per-head agreement."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from visiondistill.cli import main
from visiondistill.core.protocol import batch_inputs
from visiondistill.models import ClassifierSpec, create_classifier
from visiondistill.reporting import write_report
from visiondistill.reporting.loader import load_task_module
from visiondistill.reporting.measure import probe_batch
from visiondistill.reporting.runs import assign_roles, build_datamodule, read_run
from visiondistill.reporting.sections import SectionContext
from visiondistill.reporting.sections.explanations import ExplanationSettings, explanation_sections

from ..support.multitask import multitask_config

pytestmark = pytest.mark.slow  # two short fits and a report: about 30 s on a loaded 2-core CPU


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A distilled multi-task run (both teachers, from saved weights) and a scratch one, as `visiondistill fit`."""
    root = tmp_path_factory.mktemp("multitask_runs")
    assert main(["fit", "--config", str(multitask_config(root, "mt_kd"))]) == 0
    assert main(["fit", "--config", str(multitask_config(root, "mt_scratch", distilled=False))]) == 0
    return root


def _row(text: str, section: str, first: str) -> list[str]:
    """The cells of the row starting with ``first`` in the table under the heading ``section``."""
    part = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    line = next(line for line in part.splitlines() if line.startswith(f"| {first} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _header(text: str, section: str) -> list[str]:
    part = text.split(f"## {section}", 1)[1]
    line = next(line for line in part.splitlines() if line.startswith("| "))
    return [cell.strip() for cell in line.strip("|").split("|")]


@torch.no_grad()
def test_report_measures_every_head_and_the_teachers_of_the_heads(runs, tmp_path):
    folders = [runs / "runs" / "mt_kd", runs / "runs" / "mt_scratch"]
    markdown, _ = write_report(folders, tmp_path / "out", num_images=8, log=lambda *_: None, explanations=False)
    text = markdown.read_text()
    student = load_task_module(read_run(folders[0]).checkpoint).student.eval()
    datamodule = build_datamodule(read_run(folders[0]))
    datamodule.setup("test")
    # Independently: top-1 of the class head and mIoU of the mask head on the whole test split.
    hits, total, iou = 0, 0, MulticlassJaccardIndex(7, average=None)
    cls_teacher = create_classifier(ClassifierSpec(name="test_resnet"), 6).eval()
    cls_teacher.load_state_dict(torch.load(runs / "teachers" / "cls_teacher.pt"))
    teacher_hits = 0
    for batch in datamodule.test_dataloader():
        out = student(batch["image"])
        hits += int((out["cls"].argmax(1) == batch["label"]).sum())
        teacher_hits += int((cls_teacher(batch["image"]).argmax(1) == batch["label"]).sum())
        total += len(batch["label"])
        iou.update(out["seg"].argmax(1), batch["mask"])
    metrics = dict(zip(_header(text, "Task metrics"), _row(text, "Task metrics", "mt_kd"), strict=True))
    assert metrics["test/cls/acc_top1"] == f"{100 * hits / total:.1f}%"
    assert metrics["test/seg/miou"] == f"{100 * float(iou.compute().mean()):.1f}%"
    # The multi-task section: each teacher on its head, the teachers' parameters added up, the ratio to the student.
    section = "Multi-task: the student against the teachers of its heads"
    columns = _header(text, section)
    teacher = dict(zip(columns, _row(text, section, "cls_teacher"), strict=True))
    assert teacher["test/cls/acc_top1"] == f"{100 * teacher_hits / total:.1f}%" and teacher["test/seg/miou"] == "–"
    rebuilt = read_run(folders[0]).hparams["teachers"]
    assert [entry["head"] for entry in rebuilt] == ["cls", "seg"]
    together = dict(zip(columns, _row(text, section, "teachers together"), strict=True))
    module = load_task_module(read_run(folders[0]).checkpoint)
    teacher_params = sum(p.numel() for net in module.build_teachers(rebuilt).values() for p in net.parameters())
    assert together["params"] == f"{teacher_params / 1e6:.3f} M"
    kd = dict(zip(columns, _row(text, section, "mt_kd"), strict=True))
    student_params = sum(p.numel() for p in student.parameters())
    assert kd["params ratio"] == f"{teacher_params / student_params:.1f}×"
    # Agreement with each teacher: the class head against the class teacher, on the report's first 8 test images.
    images = batch_inputs(probe_batch(datamodule, 8))
    agree = (student(images)["cls"].argmax(1) == cls_teacher(images).argmax(1)).float().mean()
    heading = "Agreement with each teacher"
    agreement = dict(zip(_header(text, heading), _row(text, heading, "mt_kd"), strict=True))
    assert agreement["cls_teacher"] == f"{100 * float(agree):.1f}" and "ensemble" not in agreement
    # Per-class tables are the per-class families only; a head is no family.
    assert "Per-class `test/seg/iou`" in text
    assert not re.search(r"Per-class `test/(cls|seg)`", text)
    card = (tmp_path / "out" / "MODEL_CARD_mt_kd.md").read_text()
    assert "| `test/seg/iou` |" in card and "| `test/cls` |" not in card


def test_explanation_sections_explain_each_head(runs):
    folders = [runs / "runs" / "mt_kd", runs / "runs" / "mt_scratch"]
    ordered = assign_roles([read_run(folder) for folder in folders])
    modules = {run.name: load_task_module(run.checkpoint) for run in ordered}
    datamodule = build_datamodule(ordered[0])
    datamodule.setup("test")
    log: list[str] = []
    context = SectionContext(ordered, modules, datamodule, probe_batch(datamodule, 4), {}, runs, log.append)
    settings = ExplanationSettings(methods=("gradcam",), images=2, faithfulness=False, sanity=False, robustness=True)
    blocks = explanation_sections(context, settings)
    titles = [block.text for block in blocks if type(block).__name__ == "Heading"]
    assert [t for t in titles if t.startswith("Explanations")] == [
        "Explanations: agreement on a scale, faithfulness, sanity, robustness — head `cls`",
        "Explanations: agreement on a scale, faithfulness, sanity, robustness — head `seg`",
    ]
    assert sum(t.startswith("Robustness") for t in titles) == 2
    assert not [line for line in log if "not written" in line], log
