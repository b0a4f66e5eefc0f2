"""benchmarks/multitask.py: the multi-task student against single-task students at the same parameter count."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch

from visiondistill.tasks.multitask import MultiTaskNet

from ..support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("multitask")


def test_a_single_task_student_counts_its_backbone_and_its_head_only(bench):
    net = MultiTaskNet("resnet10t", 6, 7, decoder_channels=8, backbone_kwargs=bench.backbone_kwargs(8))
    total = sum(p.numel() for p in net.parameters())
    cls_head = sum(p.numel() for p in net.classifier.parameters())
    assert bench.head_parameters(net, ("cls", "seg")) == total
    assert bench.head_parameters(net, ("seg",)) == total - cls_head
    assert bench.head_parameters(net, ("cls",)) == sum(
        p.numel() for p in (*net.backbone.parameters(), *net.classifier.parameters())
    )


def _run(seed: int, cls: float, seg: float, params: int = 100) -> dict:
    return {"seed": seed, "scores": {"test/cls/acc_top1": cls, "test/seg/miou": seg}, "params": params}


def test_table_gives_mean_and_sample_std_per_head(bench):
    results = {
        "multi-task": [_run(0, 0.80, 0.50), _run(1, 0.90, 0.70)],
        "single-task": [_run(0, 0.70, 0.60), _run(1, 0.70, 0.60)],
    }
    teachers = {"scores": {"test/cls/acc_top1": 0.95, "test/seg/miou": 0.8}, "params": {"cls": 1000, "seg": 2000}}
    text = bench.table(results, teachers, {"cls": 40, "seg": 55})
    assert "| 1,000 + 2,000 | 95.0 | 80.0 |" in text
    # Sample std of (80, 90) = 7.1, of (50, 70) = 14.1.
    assert "| multi-task student | 100 | 85.0 ± 7.1 | 60.0 ± 14.1 |" in text
    assert "| single-task students | 40 + 55 | 70.0 ± 0.0 | 60.0 ± 0.0 |" in text


def test_tiny_run_and_merge(bench, tmp_path, capsys):
    tiny = ["--epochs", "1", "--teacher-epochs", "1", "--num-train", "8", "--num-test", "8", "--batch-size", "8"]
    tiny += ["--width", "16", "--single-width", "11.3", "--decoder-channels", "8", "--data-dir", str(tmp_path)]
    tiny += ["--cls-teacher-name", "test_resnet", "--seg-encoder", "tu-test_resnet"]
    summary = bench.main([*tiny, "--seeds", "0", "1", "--json", str(tmp_path / "run.json")])
    assert [len(summary["results"][arm]) for arm in ("multi-task", "single-task")] == [2, 2]
    for run in (*summary["results"]["multi-task"], *summary["results"]["single-task"]):
        assert set(run["scores"]) == {"test/cls/acc_top1", "test/seg/miou"}
        assert all(0.0 <= value <= 1.0 for value in run["scores"].values())
    # The single-task arm's parameters are the two students' (each counted without the head it does not train).
    assert sum(summary["split"].values()) == summary["results"]["single-task"][0]["params"]
    assert set(summary["teachers"]["scores"]) == {"test/cls/acc_top1", "test/seg/miou"}
    out = capsys.readouterr().out
    assert "2 seeds (0, 1)" in out and "| multi-task student |" in out and "command: python" in out
    # --merge pools the seeds of saved runs and prints the same table.
    merged = bench.main(["--merge", str(tmp_path / "run.json")])
    assert [run["seed"] for run in merged["results"]["single-task"]] == [0, 1]
    assert bench.table(summary["results"], summary["teachers"], summary["split"]) in capsys.readouterr().out


def test_trained_teachers_are_read_from_their_checkpoints_not_trained(bench, tmp_path, capsys):
    tiny = ["--epochs", "1", "--num-train", "8", "--num-val", "4", "--num-test", "8", "--batch-size", "8"]
    tiny += ["--width", "16", "--single-width", "11.3", "--decoder-channels", "8", "--data-dir", str(tmp_path)]
    trained = ["--teacher-epochs", "1", "--cls-teacher-name", "test_resnet", "--seg-encoder", "tu-test_resnet"]
    given = {}
    for head in ("cls", "seg"):  # two tiny teachers, then moved out of the benchmark's own teacher folder
        path = Path(bench.main([*tiny, *trained, "--teacher-only", head])["teacher"])
        given[head] = path.rename(tmp_path / f"given_{head}.ckpt")
    shutil.rmtree(path.parent)
    options = ["--cls-teacher", str(given["cls"]), "--seg-teacher", str(given["seg"]), "--seeds", "0"]
    # One arm per run (--arms), as two processes would; --merge pools them.
    single = bench.main([*tiny, *options, "--arms", "single-task", "--json", str(tmp_path / "single.json")])
    summary = bench.main([*tiny, *options, "--arms", "multi-task", "--json", str(tmp_path / "multi.json")])
    assert list(summary["results"]) == ["multi-task"] and list(single["results"]) == ["single-task"]
    # Their networks come from the checkpoints (no name or arch given), and nothing was trained in their place.
    assert summary["teachers"]["label"] == "test_resnet classifier + Unet tu-test_resnet"
    assert not list(tmp_path.glob("teachers_*"))
    # Chance: the most frequent class of the test split, and background everywhere.
    chance = summary["teachers"]["chance"]
    labels = [int(batch["label"][i]) for batch in bench.shapes(bench.build_parser().parse_args(tiny)).test_dataloader()
              for i in range(len(batch["label"]))]  # fmt: skip
    assert chance["test/cls/acc_top1"] == pytest.approx(max(map(labels.count, set(labels))) / len(labels))
    assert 0.0 < chance["test/seg/miou"] < 1 / 7
    assert f"| {bench.CHANCE} | 0 | {100 * chance['test/cls/acc_top1']:.1f} |" in capsys.readouterr().out
    merged = bench.main(["--merge", str(tmp_path / "multi.json"), str(tmp_path / "single.json")])
    assert merged["results"] == {"multi-task": summary["results"]["multi-task"], **single["results"]}
    out = capsys.readouterr().out
    assert "| multi-task student |" in out and "| single-task students |" in out
    scores = {arm: merged["results"][arm][0]["scores"] for arm in ("multi-task", "single-task")}
    keys = bench.HEAD_KEYS.values()
    cells = [f"{arm} " + " / ".join(f"{100 * s[key]:.1f}" for key in keys) for arm, s in scores.items()]
    assert f"seed 0: {cells[0]}; {cells[1]}" in out  # the per-seed figures


@pytest.mark.parametrize("option", ["--cls-teacher", "--seg-teacher"])
def test_a_missing_teacher_checkpoint_is_refused_before_any_work(bench, tmp_path, capsys, option):
    with pytest.raises(SystemExit):
        bench.main([option, str(tmp_path / "nope.ckpt"), "--data-dir", str(tmp_path / "data")])
    assert f"{option} {tmp_path / 'nope.ckpt'}: no such checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_below_chance_names_the_heads_whose_teacher_does_not_beat_chance_by_the_margin(bench):
    teachers = {
        "scores": {"test/cls/acc_top1": 0.9, "test/seg/miou": 0.2},
        "chance": {"test/cls/acc_top1": 0.2, "test/seg/miou": 0.12},
    }
    assert bench.below_chance(teachers) == ["seg"]
    assert bench.below_chance(teachers, margin=0.05) == []
    assert bench.below_chance({"scores": teachers["scores"]}) == []  # runs saved before chance was measured


def test_cls_teacher_init_starts_the_classifier_from_a_segmenter_encoder(bench, tmp_path):
    segmenter = smp.FPN(encoder_name="resnet18", encoder_weights=None, classes=7)
    torch.save({"state_dict": {f"student.{k}": v for k, v in segmenter.state_dict().items()}}, tmp_path / "seg.ckpt")
    classifier = timm.create_model("resnet18", num_classes=6)
    head = classifier.fc.weight.clone()
    bench.init_from_encoder(classifier, str(tmp_path / "seg.ckpt"))
    assert torch.equal(classifier.layer4[1].conv2.weight, segmenter.encoder.layer4[1].conv2.weight)
    assert torch.equal(classifier.bn1.running_var, segmenter.encoder.bn1.running_var)
    assert torch.equal(classifier.fc.weight, head)  # the class head starts afresh
    # An encoder of another network is refused, naming the option.
    with pytest.raises(SystemExit, match="--cls-teacher-init .*does not fit the classifier"):
        bench.init_from_encoder(timm.create_model("resnet10t", num_classes=6), str(tmp_path / "seg.ckpt"))


def test_teachers_initialised_from_different_checkpoints_are_kept_apart(bench, tmp_path):
    # Two runs both called "teacher" (runs/a/teacher, runs/b/teacher): their fine-tuned classifiers must not share a
    # cache folder, or the second benchmark would silently reuse the first one's teacher.
    folders = set()
    for run, content in (("a", b"one"), ("b", b"two")):
        checkpoint = tmp_path / run / "teacher" / "checkpoints" / "best.ckpt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(content)
        args = bench.build_parser().parse_args(["--cls-teacher-init", str(checkpoint), "--data-dir", str(tmp_path)])
        folders.add(bench.teacher_folder(args))
    assert len(folders) == 2 and all("_cls-init-teacher-" in folder.name for folder in folders)
    plain = bench.build_parser().parse_args(["--data-dir", str(tmp_path)])
    assert "cls-init" not in bench.teacher_folder(plain).name
