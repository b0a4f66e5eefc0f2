"""`visiondistill report`: run folders in, Markdown + self-contained HTML + model cards out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from visiondistill.cli import main as cli_main
from visiondistill.reporting import RunError, read_run, write_report
from visiondistill.reporting.document import Heading, Image, Paragraph, Table, to_html, to_markdown
from visiondistill.reporting.model_card import bias_check
from visiondistill.reporting.report import format_value
from visiondistill.reporting.runs import assign_roles, run_folders_by_data

MODEL_CARD_SECTIONS = (
    "## Model details",
    "## Intended use",
    "## Factors",
    "## Metrics",
    "## Evaluation data",
    "## Training data",
    "## Ethical considerations",
    "## Caveats and recommendations",
)


@pytest.fixture
def demo_runs(quick_classification_demo) -> Path:
    """The quick classification demo's run folders: teacher, student_scratch, student_kd."""
    return quick_classification_demo / "runs" / "classification"


def test_report_tables_match_the_checkpoints(demo_runs, tmp_path):
    runs = demo_runs
    folders = [runs / "student_kd", runs / "teacher", runs / "student_scratch"]  # any order
    markdown, page = write_report(folders, tmp_path / "out", num_images=8, log=lambda *_: None, explanations=False)
    text = markdown.read_text()
    assert text.index("| teacher |") < text.index("| student_scratch |") < text.index("| student_kd |")
    for section in ("## Task metrics", "## Compression", "## Agreement with the teacher", "## Curves"):
        assert section in text
    assert "test/acc_top1" in text and "Per-class `test/acc_class`" in text
    # The compression ratio is the teacher's parameter count over the student's, counted independently here.
    from visiondistill.reporting.loader import load_task_module

    teacher = load_task_module(read_run(runs / "teacher").checkpoint).student
    student = load_task_module(read_run(runs / "student_kd").checkpoint).student
    ratio = sum(p.numel() for p in teacher.parameters()) / sum(p.numel() for p in student.parameters())
    row = next(line for line in text.splitlines() if line.startswith("| student_kd |") and " M |" in line)
    assert f"| {ratio:.1f}× |" in row
    # Agreement rows exist for both students, with values in range.
    cams = text.split("## Agreement with the teacher", 1)[1].split("Attention-map cosine", 1)[0]
    pearson = re.findall(r"^\| student_(?:scratch|kd) \| (-?[0-9.]+) \|", cams, flags=re.MULTILINE)
    assert len(pearson) == 2 and all(-1.0 <= float(p) <= 1.0 for p in pearson)


def test_html_is_self_contained(demo_runs, tmp_path):
    runs = demo_runs
    # The explanation sections are tested in test_explanation_sections.py: left out here, they cost a minute.
    _, page = write_report(
        sorted(runs.iterdir()), tmp_path / "out", num_images=8, log=lambda *_: None, explanations=False
    )
    html = page.read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<table>" in html and "http" not in html.split("<body>", 1)[1]


def test_model_card_has_every_section_and_real_figures(demo_runs, tmp_path):
    runs = demo_runs
    write_report(sorted(runs.iterdir()), tmp_path / "out", num_images=8, log=lambda *_: None, explanations=False)
    card = (tmp_path / "out" / "MODEL_CARD_student_kd.md").read_text()
    positions = [card.index(section) for section in MODEL_CARD_SECTIONS]
    assert positions == sorted(positions)
    assert "LogitDistillation" in card and "AttentionTransfer" in card
    assert "Bias check" in card and "`test/acc_class`" in card
    assert not list(runs.rglob("MODEL_CARD*")), "the report writes nothing into run folders (they are write-once)"
    assert not (tmp_path / "out" / "MODEL_CARD_student_scratch.md").exists(), "only distilled students get a card"


def test_report_command(demo_runs, tmp_path):
    runs = demo_runs
    out = tmp_path / "cmd"
    folders = [str(runs / name) for name in ("teacher", "student_kd")]
    # --no-explanations: the explanation sections have their own tests; here the command line itself is checked.
    assert (
        cli_main(["report", *folders, "--out", str(out), "--num-images", "4", "--no-model-card", "--no-explanations"])
        == 0
    )
    assert (out / "report.html").is_file() and not list(out.glob("MODEL_CARD_*"))


def test_scalars_are_read_per_epoch(demo_runs):
    runs = demo_runs
    run = read_run(runs / "student_kd")
    assert run.role == "distilled" and run.task == "classification"
    assert run.monitor == ("val/acc_top1", "max")
    assert [epoch for epoch, _ in run.scalars["val/acc_top1"]] == [1]
    assert run.epochs == 1


# -- pieces ---------------------------------------------------------------------------------------


def _fake_run(folder: Path, task: str = "visiondistill.tasks.ClassificationTask", teacher: Path | None = None) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    config = {"model": {"class_path": task}, "data": {"class_path": "x.Data", "init_args": {"data_dir": "d"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    hparams = {"_class_path": task, "student": {"name": "s"}, "teacher": None}
    if teacher is not None:
        hparams["teacher"] = {"name": "t", "checkpoint": str(teacher / "checkpoints" / "best.ckpt")}
    torch.save({"hyper_parameters": hparams, "state_dict": {}}, folder / "checkpoints" / "best.ckpt")
    return folder


def test_roles_follow_the_teacher_checkpoint(tmp_path):
    teacher = _fake_run(tmp_path / "big")
    scratch = _fake_run(tmp_path / "small")
    distilled = _fake_run(tmp_path / "small_kd", teacher=teacher)
    ordered = assign_roles([read_run(distilled), read_run(scratch), read_run(teacher)])
    assert [(r.name, r.role) for r in ordered] == [("big", "teacher"), ("small", "scratch"), ("small_kd", "distilled")]


def test_roles_follow_every_teacher_of_several(tmp_path):
    first, second = _fake_run(tmp_path / "big"), _fake_run(tmp_path / "other")
    distilled = _fake_run(tmp_path / "small_kd")
    path = distilled / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["hyper_parameters"]["teachers"] = [
        {"id": t.name, "weight": 1.0, "name": "t", "checkpoint": str(t / "checkpoints" / "best.ckpt")}
        for t in (first, second)
    ]
    torch.save(checkpoint, path)
    ordered = assign_roles([read_run(distilled), read_run(second), read_run(first)])
    assert sorted((r.name, r.role) for r in ordered) == [
        ("big", "teacher"),
        ("other", "teacher"),
        ("small_kd", "distilled"),
    ]


def test_run_folders_are_grouped_by_data(tmp_path):
    _fake_run(tmp_path / "a")
    _fake_run(tmp_path / "b")
    other = _fake_run(tmp_path / "c")
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["data"]["init_args"]["data_dir"] = "elsewhere"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "not_a_run").mkdir()
    groups = run_folders_by_data(tmp_path)
    assert sorted([p.name for p in g] for g in groups) == [["a", "b"], ["c"]]


def test_bad_run_folders_are_named(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        read_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"empty: no config.yaml"):
        read_run(tmp_path / "empty")
    (tmp_path / "empty" / "config.yaml").write_text("model: {}\n")
    with pytest.raises(RunError, match=r"no checkpoint \(looked for checkpoints/best.ckpt"):
        read_run(tmp_path / "empty")
    a = _fake_run(tmp_path / "cls")
    b = _fake_run(tmp_path / "seg", task="visiondistill.tasks.SegmentationTask")
    with pytest.raises(RunError, match="different tasks"):
        write_report([a, b], tmp_path / "out")
    with pytest.raises(RunError, match="at least one run folder"):
        write_report([], tmp_path / "out")


def test_format_value():
    assert format_value("test/miou", 0.4567) == "45.7%"
    assert format_value("test/loss", 0.4567) == "0.4567"
    assert format_value("test/map", -1.0) == "-1"  # torchmetrics' "no data" marker is not a percentage


def test_bias_check_flags_classes_far_below_the_mean():
    rows = bias_check({"test/iou/a": 0.9, "test/iou/b": 0.8, "test/iou/c": 0.5, "test/miou": 0.73, "test/loss": 1})
    assert len(rows) == 1
    assert rows[0]["worst class"] == "c (50.0%)"
    assert rows[0]["classes ≥ 10 points below the mean"] == "c"  # mean 73.3: c is 23 points below, b 7 above


def test_document_renders_the_same_blocks_twice(tmp_path):
    from visiondistill.explain.render import save_png

    save_png(torch.zeros(4, 4, 3, dtype=torch.uint8).numpy(), tmp_path / "p.png")
    blocks = [Heading("T", 1), Paragraph("a `code` word"), Table([{"k": "v <b>"}]), Image("p.png", "cap")]
    markdown = to_markdown(blocks)
    assert markdown.startswith("# T\n\na `code` word\n\n| k |\n|---|\n| v <b> |\n\n![cap](p.png)")
    html = to_html(blocks, tmp_path, "title")
    assert "<code>code</code>" in html and "v &lt;b&gt;" in html and "data:image/png;base64," in html
    # A narrow cell wraps between a value and its interval, never inside them ("0.173 [0.165," / "0.180]" was hard
    # to read in the browser); other cells are rendered as before.
    cells = to_html([Table([{"m": "0.173 [0.165, 0.180]", "n": "a [b] c"}])], tmp_path, "t")
    assert '<td><span class="value">0.173</span> <span class="interval">[0.165, 0.180]</span></td>' in cells
    assert "<td>a [b] c</td>" in cells
    assert ".value, .interval { white-space: nowrap; display: inline-block; }" in cells
