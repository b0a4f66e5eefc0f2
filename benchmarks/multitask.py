"""One multi-task student against one single-task student per task, at the same total parameter count.

Two teachers are trained once (seed 0) on the shapes' multi-task training split (`ShapesMultiTask`): a classifier
(the image's dominant shape, top-1) and a U-Net (the mask, mIoU). Then, for each seed, both arms are distilled from
those same teachers with the same terms (logit KD at T = 4 on the class, pixel-wise KD at T = 1 on the mask, each
plus its task loss), the same optimiser, epochs and data, and scored on the held-out test split:

  multi-task    one `MultiTaskNet`: a timm ResNet backbone of width ``--width`` shared by a class head and a mask
                decoder, both heads distilled at once;
  single-task   two networks of the same design, each with one head and its own backbone of width
                ``--single-width`` (the other head's loss weight 0, no teacher, its parameters not counted): the
                class student and the mask student, whose parameters together match the multi-task student's.

Prints the parameter counts, the teachers' test metrics, every run's, and mean ± std per task metric, then the
command that reproduced it.

    python benchmarks/multitask.py [--seeds 0 1 2] [--epochs 10] [--teacher-epochs 10] [--image-size 32]
        [--width 32] [--single-width 22.6] [--num-train 1000] [--data-dir /tmp/visiondistill-multitask] [--threads 1]
        [--json FILE]
    python benchmarks/multitask.py --merge FILE [FILE …]   # the table of several runs (e.g. one seed each)
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from visiondistill.data import ShapesMultiTask
from visiondistill.distill import LogitDistillation, PixelwiseDistillation
from visiondistill.tasks import ClassificationTask, MultiTaskModule, SegmentationTask

from _common import quiet_trainer

warnings.filterwarnings("ignore")

HEAD_KEYS = {"cls": "test/cls/acc_top1", "seg": "test/seg/miou"}
CLS_TEACHER = {"name": "resnet18"}
SEG_TEACHER = {"arch": "Unet", "encoder_name": "resnet18", "kwargs": {"decoder_channels": [64, 32, 16, 16, 16]}}
BACKBONE = "resnet10t"


def trainer(epochs: int, callbacks: list | None = None) -> pl.Trainer:
    return quiet_trainer(callbacks or [], max_epochs=epochs, limit_val_batches=0)


def shapes(args: argparse.Namespace) -> ShapesMultiTask:
    data = ShapesMultiTask(
        str(Path(args.data_dir) / f"shapes_{args.image_size}px_{args.num_train}_{args.num_test}_{args.difficulty:g}"),
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=0,
        num_train=args.num_train,
        num_val=20,
        num_test=args.num_test,
        difficulty=args.difficulty,
        seed=0,
    )
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    return data


class HeadLoader:
    """A multi-task loader seen by a single-task teacher: batches ``(image, batch[key])``."""

    def __init__(self, loader: Any, key: str) -> None:
        self.loader, self.key = loader, key

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            yield batch["image"], batch[self.key]


def train_teachers(args: argparse.Namespace, data: ShapesMultiTask) -> dict[str, Path]:
    """Both teachers' checkpoints (trained once, seed 0, kept under ``--data-dir``)."""
    name = f"teachers_{args.image_size}px_{args.num_train}_{args.difficulty:g}_{args.teacher_epochs}ep"
    name += f"_b{args.batch_size}_lr{args.teacher_lr:g}"
    if (args.cls_teacher, args.seg_encoder) != ("resnet18", "resnet18"):
        name += f"_{args.cls_teacher}_{args.seg_encoder}"
    folder = Path(args.data_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"cls": folder / "cls.ckpt", "seg": folder / "seg.ckpt"}
    for head, task_class, spec, classes, key in (
        ("cls", ClassificationTask, CLS_TEACHER, 6, "label"),
        ("seg", SegmentationTask, SEG_TEACHER, 7, "mask"),
    ):
        if paths[head].is_file() or args.teacher_only not in (None, head):
            continue
        pl.seed_everything(0, workers=True)
        task = task_class(student=spec, num_classes=classes, lr=args.teacher_lr, warmup_epochs=0.5)
        fit = trainer(args.teacher_epochs)
        fit.fit(task, HeadLoader(data.train_dataloader(), key))
        fit.save_checkpoint(paths[head])
    return paths


def teacher_entries(paths: dict[str, Path], heads: tuple[str, ...]) -> list[dict[str, Any]]:
    specs = {"cls": CLS_TEACHER, "seg": SEG_TEACHER}
    return [specs[h] | {"id": f"{h}_teacher", "head": h, "checkpoint": str(paths[h])} for h in heads]


def student(args: argparse.Namespace, width: float, paths: dict[str, Path], heads: tuple[str, ...]) -> MultiTaskModule:
    """A student distilled on ``heads`` (the others get loss weight 0 and no teacher)."""
    return MultiTaskModule(
        backbone=args.backbone,
        backbone_kwargs=backbone_kwargs(width),
        num_classes=6,
        num_seg_classes=7,
        decoder_channels=args.decoder_channels,
        teachers=teacher_entries(paths, heads),
        task_weights={h: 1.0 if h in heads else 0.0 for h in ("cls", "seg")},
        lr=args.lr,
        warmup_epochs=0.5,
    )


def backbone_kwargs(width: float) -> dict[str, Any]:
    """A timm resnet10t of this width: stages of ``width × (1, 2, 4, 8)`` channels, a stem of ``width / 2``."""
    return {"channels": [round(width * m) for m in (1, 2, 4, 8)], "stem_width": round(width / 2)}


def terms(heads: tuple[str, ...]) -> list:
    made = {
        "cls": lambda: LogitDistillation(teacher="cls_teacher", temperature=4.0),
        "seg": lambda: PixelwiseDistillation(teacher="seg_teacher", temperature=1.0),
    }
    return [made[h]() for h in heads]


def head_parameters(net: nn.Module, heads: tuple[str, ...]) -> int:
    """Parameters a network uses for ``heads``: the backbone, the class head and/or the mask decoder."""
    parts = [net.backbone]
    parts += [net.classifier] if "cls" in heads else []
    parts += [net.lateral, net.decoder] if "seg" in heads else []
    return sum(p.numel() for part in parts for p in part.parameters())


def run_arm(arm: str, seed: int, args: argparse.Namespace, data: ShapesMultiTask, paths: dict[str, Path]) -> dict:
    """One arm at one seed: its test metric per head and its parameters."""
    groups = [("cls", "seg")] if arm == "multi-task" else [("cls",), ("seg",)]
    width = args.width if arm == "multi-task" else args.single_width
    scores, params = {}, 0
    for heads in groups:
        pl.seed_everything(seed, workers=True)
        module = student(args, width, paths, heads)
        trainer(args.epochs, terms(heads)).fit(module, datamodule=data)
        networks = dict.fromkeys(heads, module.student)
        scores |= module.score_heads(networks, data.test_dataloader())
        params += head_parameters(module.student, heads)
    return {"seed": seed, "scores": scores, "params": params}


def teacher_scores(args: argparse.Namespace, data: ShapesMultiTask, paths: dict[str, Path]) -> dict[str, Any]:
    module = student(args, args.width, paths, ("cls", "seg"))
    teachers = module.build_teachers(teacher_entries(paths, ("cls", "seg")))
    networks = {h: teachers[f"{h}_teacher"] for h in ("cls", "seg")}
    params = {h: sum(p.numel() for p in n.parameters()) for h, n in networks.items()}
    return {"scores": module.score_heads(networks, data.test_dataloader()), "params": params}


def mean_std(values: list[float]) -> str:
    values = [100 * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def table(results: dict[str, list[dict]], teachers: dict[str, Any], split: dict[str, int]) -> str:
    lines = ["| network | parameters | test top-1 (cls head) | test mIoU (seg head) |", "| --- | ---: | ---: | ---: |"]
    t_scores, t_params = teachers["scores"], teachers["params"]
    lines.append(
        f"| teachers ({CLS_TEACHER['name']} classifier + U-Net {SEG_TEACHER['encoder_name']}) | "
        f"{t_params['cls']:,} + {t_params['seg']:,} | "
        f"{100 * t_scores[HEAD_KEYS['cls']]:.1f} | {100 * t_scores[HEAD_KEYS['seg']]:.1f} |"
    )
    for arm, runs in results.items():
        params = f"{runs[0]['params']:,}" if arm == "multi-task" else f"{split['cls']:,} + {split['seg']:,}"
        cells = [mean_std([run["scores"][HEAD_KEYS[h]] for run in runs]) for h in ("cls", "seg")]
        lines.append(f"| {arm} student{'s' if arm != 'multi-task' else ''} | {params} | {' | '.join(cells)} |")
    return "\n".join(lines)


def merge(paths: list[str]) -> dict:
    """The table of several runs' JSON files (the same teachers and split; their seeds pooled)."""
    loaded = [json.loads(Path(path).read_text()) for path in paths]
    results: dict[str, list[dict]] = {"multi-task": [], "single-task": []}
    for summary in loaded:
        for arm in results:
            results[arm] += summary["results"][arm]
    seeds = sorted({run["seed"] for run in results["multi-task"]})
    print(f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), from {', '.join(paths)}\n")
    print(table(results, loaded[0]["teachers"], loaded[0]["split"]))
    for summary in loaded:
        print(f"\ncommand: {summary.get('command', '?')} ({summary.get('seconds', 0):.0f} s)")
    return {"teachers": loaded[0]["teachers"], "results": results, "split": loaded[0]["split"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every student")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--difficulty", type=float, default=0.0)
    parser.add_argument("--width", type=float, default=32, help="multi-task backbone width (channels of stage 1)")
    parser.add_argument("--single-width", type=float, default=22.6, help="width of each single-task backbone")
    parser.add_argument("--decoder-channels", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--teacher-lr", type=float, default=0.002)
    parser.add_argument("--data-dir", default="/tmp/visiondistill-multitask")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no spinning when busy)")
    parser.add_argument("--cls-teacher", default="resnet18", help="timm name of the classification teacher")
    parser.add_argument("--seg-encoder", default="resnet18", help="encoder of the U-Net teacher (smp name)")
    parser.add_argument("--backbone", default=BACKBONE, help="timm ResNet of the students (its `channels` are set)")
    parser.add_argument("--teacher-only", choices=("cls", "seg"), default=None, help="train this teacher, then stop")
    parser.add_argument(
        "--merge", nargs="+", default=None, help="print the table of these --json files (e.g. one per seed), no runs"
    )
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge)
    CLS_TEACHER["name"], SEG_TEACHER["encoder_name"] = args.cls_teacher, args.seg_encoder
    torch.set_num_threads(args.threads)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = shapes(args)
    paths = train_teachers(args, data)
    if args.teacher_only:  # one teacher trained (e.g. both at once in two processes); the students come later
        return {"teacher": str(paths[args.teacher_only])}
    teachers = teacher_scores(args, data, paths)
    print(f"teachers ({time.perf_counter() - start:.0f} s): {teachers}", flush=True)
    split = {h: head_parameters(student(args, args.single_width, paths, (h,)).student, (h,)) for h in ("cls", "seg")}
    results: dict[str, list[dict]] = {"multi-task": [], "single-task": []}
    for seed in args.seeds:
        for arm in results:
            results[arm].append(run_arm(arm, seed, args, data, paths))
            print(f"seed {seed} {arm}: {results[arm][-1]} ({time.perf_counter() - start:.0f} s)", flush=True)
        if args.json:  # after every seed: a run stopped early keeps what it measured
            partial = {"teachers": teachers, "results": results, "split": split, "seeds_done": seed}
            Path(args.json).write_text(json.dumps(partial, indent=2))
    seconds = time.perf_counter() - start
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); {seconds:.0f} s\n")
    print(table(results, teachers, split))
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"\ncommand: {command}")
    summary = {"teachers": teachers, "results": results, "split": split, "seconds": seconds, "command": command}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
