"""One multi-task student against one single-task student per task, at the same total parameter count.

Two teachers: trained ones (``--cls-teacher CKPT --seg-teacher CKPT``, e.g. the runs of the shipped teacher configs;
their networks are read from the checkpoints), or else trained here once (seed 0) on the shapes' multi-task training
split (`ShapesMultiTask`): a classifier (the image's dominant shape, top-1) and a U-Net (the mask, mIoU). The
teachers are scored on the test split first, next to chance (the best constant prediction). Then, for each seed,
both arms are distilled from those same teachers with the same terms (logit KD at T = 4 on the class, pixel-wise
KD at T = 1 on the mask, each plus its task loss), the same optimiser, epochs and data, and scored on the
held-out test split:

  multi-task    one `MultiTaskNet`: a timm ResNet backbone of width ``--width`` shared by a class head and a mask
                decoder, both heads distilled at once;
  single-task   two networks of the same design, each with one head and its own backbone of width
                ``--single-width`` (the other head's loss weight 0, no teacher, its parameters not counted): the
                class student and the mask student, whose parameters together match the multi-task student's.

Prints the parameter counts, the teachers' test metrics, every run's, and mean ± std per task metric, then the
command that reproduced it.

    python benchmarks/multitask.py [--seeds 0 1 2] [--epochs 10] [--teacher-epochs 10] [--image-size 32]
        [--width 32] [--single-width 22.6] [--num-train 1000] [--data-dir /tmp/visiondistill-multitask] [--threads 1]
        [--cls-teacher CKPT] [--seg-teacher CKPT] [--json FILE]
    python benchmarks/multitask.py --merge FILE [FILE …]   # the table of several runs (e.g. one seed each)
"""

from __future__ import annotations

import argparse
import hashlib
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
from visiondistill.models.checkpoints import extract_state_dict, read_checkpoint
from visiondistill.tasks import ClassificationTask, MultiTaskModule, SegmentationTask

from _common import quiet_trainer

warnings.filterwarnings("ignore")

HEAD_KEYS = {"cls": "test/cls/acc_top1", "seg": "test/seg/miou"}
CLS_TEACHER = {"name": "resnet18"}
SEG_TEACHER = {"arch": "Unet", "encoder_name": "resnet18", "kwargs": {"decoder_channels": [64, 32, 16, 16, 16]}}
BACKBONE = "resnet10t"
CHANCE = "chance (best constant prediction)"
ARMS = ("multi-task", "single-task")


def trainer(epochs: int, callbacks: list | None = None) -> pl.Trainer:
    return quiet_trainer(callbacks or [], max_epochs=epochs, limit_val_batches=0)


def shapes(args: argparse.Namespace) -> ShapesMultiTask:
    counts = f"{args.num_train}_{args.num_val}_{args.num_test}"
    data = ShapesMultiTask(
        str(Path(args.data_dir) / f"shapes_{args.image_size}px_{counts}_{args.difficulty:g}"),
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=0,
        num_train=args.num_train,
        num_val=args.num_val,
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


def teacher_folder(args: argparse.Namespace) -> Path:
    """Where teachers trained here are kept: one folder per data set and teacher settings."""
    name = f"teachers_{args.image_size}px_{args.num_train}_{args.difficulty:g}_{args.teacher_epochs}ep"
    name += f"_b{args.batch_size}_lr{args.teacher_lr:g}"
    if (args.cls_teacher_name, args.seg_encoder) != ("resnet18", "resnet18"):
        name += f"_{args.cls_teacher_name}_{args.seg_encoder}"
    if args.cls_teacher_init:  # named by the checkpoint's bytes too: two runs both called "teacher" differ
        init = Path(args.cls_teacher_init)
        digest = hashlib.sha1(init.read_bytes()).hexdigest()[:8] if init.is_file() else "missing"
        name += f"_cls-init-{init.parent.parent.name}-{digest}"
    return Path(args.data_dir) / name


def train_teachers(args: argparse.Namespace, data: ShapesMultiTask) -> dict[str, dict[str, Any]]:
    """Both teachers' specs, checkpoint included: ``--cls-teacher``/``--seg-teacher`` as given, else trained here.

    A given checkpoint's network is read from it (its recorded ``student`` spec); a teacher trained here is
    trained once (seed 0) and kept under ``--data-dir``.
    """
    given = {"cls": args.cls_teacher, "seg": args.seg_teacher}
    folder = teacher_folder(args)
    paths = {"cls": folder / "cls.ckpt", "seg": folder / "seg.ckpt"}
    specs = {head: {"checkpoint": str(given[head])} for head in given if given[head]}
    for head, task_class, spec, classes, key in (
        ("cls", ClassificationTask, CLS_TEACHER, 6, "label"),
        ("seg", SegmentationTask, SEG_TEACHER, 7, "mask"),
    ):
        if head in specs:
            continue
        specs[head] = spec | {"checkpoint": str(paths[head])}
        if paths[head].is_file() or args.teacher_only not in (None, head):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        pl.seed_everything(0, workers=True)
        task = task_class(student=spec, num_classes=classes, lr=args.teacher_lr, warmup_epochs=0.5)
        if head == "cls" and args.cls_teacher_init:
            init_from_encoder(task.student, args.cls_teacher_init)
        fit = trainer(args.teacher_epochs)
        fit.fit(task, HeadLoader(data.train_dataloader(), key))
        fit.save_checkpoint(paths[head])
    return specs


def init_from_encoder(classifier: nn.Module, checkpoint: str) -> None:
    """Starts a timm ResNet classifier from a segmentation checkpoint's smp ResNet encoder (same layer names).

    Every backbone weight must come from the encoder; only the classifier (``fc``) starts afresh.
    """
    state = extract_state_dict(read_checkpoint(checkpoint))
    encoder = {key.removeprefix("encoder."): value for key, value in state.items() if key.startswith("encoder.")}
    try:
        missing, unexpected = classifier.load_state_dict(encoder, strict=False)
    except RuntimeError as error:  # a weight of another shape
        missing, unexpected = [str(error).splitlines()[-1].strip()], []
    if unexpected or any(not key.startswith("fc.") for key in missing):
        raise SystemExit(
            f"--cls-teacher-init {checkpoint}: its encoder does not fit the classifier (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}); use a ResNet of the same depth"
        )


def teacher_entries(specs: dict[str, dict[str, Any]], heads: tuple[str, ...]) -> list[dict[str, Any]]:
    return [specs[h] | {"id": f"{h}_teacher", "head": h} for h in heads]


def teacher_label(specs: dict[str, dict[str, Any]]) -> str:
    """The two teachers in words (``resnet18 classifier + FPN resnet18``), read from a checkpoint when not given."""
    words = {}
    for head, spec in specs.items():
        if not (spec.get("name") or spec.get("arch")):
            spec = read_checkpoint(spec["checkpoint"]).get("hyper_parameters", {}).get("student") or {}
        seg = f"{spec.get('arch')} {spec.get('encoder_name')}"
        words[head] = f"{spec.get('name')} classifier" if head == "cls" else seg
    return f"{words['cls']} + {words['seg']}"


def student(
    args: argparse.Namespace, width: float, specs: dict[str, dict[str, Any]], heads: tuple[str, ...]
) -> MultiTaskModule:
    """A student distilled on ``heads`` (the others get loss weight 0 and no teacher)."""
    return MultiTaskModule(
        backbone=args.backbone,
        backbone_kwargs=backbone_kwargs(width),
        num_classes=6,
        num_seg_classes=7,
        decoder_channels=args.decoder_channels,
        teachers=teacher_entries(specs, heads),
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


def run_arm(arm: str, seed: int, args: argparse.Namespace, data: ShapesMultiTask, specs: dict[str, dict]) -> dict:
    """One arm at one seed: its test metric per head and its parameters."""
    groups = [("cls", "seg")] if arm == "multi-task" else [("cls",), ("seg",)]
    width = args.width if arm == "multi-task" else args.single_width
    scores, params = {}, 0
    for heads in groups:
        pl.seed_everything(seed, workers=True)
        module = student(args, width, specs, heads)
        trainer(args.epochs, terms(heads)).fit(module, datamodule=data)
        networks = dict.fromkeys(heads, module.student)
        scores |= module.score_heads(networks, data.test_dataloader())
        params += head_parameters(module.student, heads)
    return {"seed": seed, "scores": scores, "params": params}


class Constant(nn.Module):
    """Predicts one class everywhere: logits ``N×C`` (``spatial`` False) or ``N×C×H×W``."""

    def __init__(self, num_classes: int, index: int, spatial: bool) -> None:
        super().__init__()
        self.register_buffer("logits", nn.functional.one_hot(torch.tensor(index), num_classes).float())
        self.spatial = spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits.expand(x.shape[0], -1)
        return logits[:, :, None, None].expand(-1, -1, *x.shape[-2:]) if self.spatial else logits


def teacher_scores(args: argparse.Namespace, data: ShapesMultiTask, specs: dict[str, dict]) -> dict[str, Any]:
    """The teachers' test metrics and parameters, and chance: the most frequent class, background everywhere."""
    module = student(args, args.width, specs, ("cls", "seg"))
    teachers = module.build_teachers(teacher_entries(specs, ("cls", "seg")))
    networks = {h: teachers[f"{h}_teacher"] for h in ("cls", "seg")}
    params = {h: sum(p.numel() for p in n.parameters()) for h, n in networks.items()}
    labels = torch.cat([batch["label"] for batch in data.test_dataloader()])
    constant = {"cls": Constant(6, int(labels.mode().values), False), "seg": Constant(7, 0, True)}
    return {
        "scores": module.score_heads(networks, data.test_dataloader()),
        "params": params,
        "chance": module.score_heads(constant, data.test_dataloader()),
        "label": teacher_label(specs),
    }


def below_chance(teachers: dict[str, Any], margin: float = 0.1) -> list[str]:
    """The heads whose teacher does not beat chance by ``margin`` (then the comparison says nothing)."""
    chance = teachers.get("chance") or {}
    return [h for h, key in HEAD_KEYS.items() if key in chance and teachers["scores"][key] < chance[key] + margin]


def mean_std(values: list[float]) -> str:
    values = [100 * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def table(results: dict[str, list[dict]], teachers: dict[str, Any], split: dict[str, int]) -> str:
    lines = ["| network | parameters | test top-1 (cls head) | test mIoU (seg head) |", "| --- | ---: | ---: | ---: |"]
    t_scores, t_params = teachers["scores"], teachers["params"]
    if "chance" in teachers:
        chance = teachers["chance"]
        lines.append(f"| {CHANCE} | 0 | {100 * chance[HEAD_KEYS['cls']]:.1f} | {100 * chance[HEAD_KEYS['seg']]:.1f} |")
    label = teachers.get("label", f"{CLS_TEACHER['name']} classifier + Unet {SEG_TEACHER['encoder_name']}")
    lines.append(
        f"| teachers ({label}) | {t_params['cls']:,} + {t_params['seg']:,} | "
        f"{100 * t_scores[HEAD_KEYS['cls']]:.1f} | {100 * t_scores[HEAD_KEYS['seg']]:.1f} |"
    )
    for arm, runs in results.items():
        if not runs:
            continue
        params = f"{runs[0]['params']:,}" if arm == "multi-task" else f"{split['cls']:,} + {split['seg']:,}"
        cells = [mean_std([run["scores"][HEAD_KEYS[h]] for run in runs]) for h in ("cls", "seg")]
        lines.append(f"| {arm} student{'s' if arm != 'multi-task' else ''} | {params} | {' | '.join(cells)} |")
    return "\n".join(lines)


def per_seed(results: dict[str, list[dict]]) -> str:
    """Every run's figures, ``seed 0: multi-task 80.0 / 50.0; single-task …`` (top-1 / mIoU in %), by seed."""
    lines = []
    for seed in sorted({run["seed"] for runs in results.values() for run in runs}):
        cells = [
            f"{arm} " + " / ".join(f"{100 * run['scores'][HEAD_KEYS[h]]:.1f}" for h in ("cls", "seg"))
            for arm, runs in results.items()
            for run in runs
            if run["seed"] == seed
        ]
        lines.append(f"seed {seed}: {'; '.join(cells)}")
    return "\n".join(lines)


def merge(paths: list[str]) -> dict:
    """The table of several runs' JSON files (the same teachers and split; their seeds pooled)."""
    loaded = [json.loads(Path(path).read_text()) for path in paths]
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for summary in loaded:
        for arm in results:
            results[arm] += summary["results"].get(arm, [])
    seeds = sorted({run["seed"] for runs in results.values() for run in runs})
    print(f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), from {', '.join(paths)}\n")
    print(table(results, loaded[0]["teachers"], loaded[0]["split"]))
    print(f"\n{per_seed(results)}")
    for summary in loaded:
        print(f"\ncommand: {summary.get('command', '?')} ({summary.get('seconds', 0):.0f} s)")
    return {"teachers": loaded[0]["teachers"], "results": results, "split": loaded[0]["split"]}


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--arms", nargs="+", choices=ARMS, default=list(ARMS), help="run only these arms (--merge pools them)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every student")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=20, help="validation images (generated, not used)")
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
    parser.add_argument("--cls-teacher", default=None, metavar="CKPT", help="a trained classification teacher")
    parser.add_argument("--seg-teacher", default=None, metavar="CKPT", help="a trained segmentation teacher")
    parser.add_argument(
        "--cls-teacher-name", default="resnet18", help="timm name of the classification teacher trained here"
    )
    parser.add_argument(
        "--cls-teacher-init",
        default=None,
        metavar="CKPT",
        help="start the classification teacher trained here from this segmentation checkpoint's encoder",
    )
    parser.add_argument("--seg-encoder", default="resnet18", help="encoder of the U-Net teacher trained here (smp)")
    parser.add_argument("--backbone", default=BACKBONE, help="timm ResNet of the students (its `channels` are set)")
    parser.add_argument("--teacher-only", choices=("cls", "seg"), default=None, help="train this teacher, then stop")
    parser.add_argument(
        "--merge", nargs="+", default=None, help="print the table of these --json files (e.g. one per seed), no runs"
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge)
    for option, path in (("--cls-teacher", args.cls_teacher), ("--seg-teacher", args.seg_teacher)):
        if path is not None and not Path(path).is_file():
            parser.error(f"{option} {path}: no such checkpoint file (give a trained teacher's .ckpt, or leave it out)")
    CLS_TEACHER["name"], SEG_TEACHER["encoder_name"] = args.cls_teacher_name, args.seg_encoder
    torch.set_num_threads(args.threads)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = shapes(args)
    specs = train_teachers(args, data)
    if args.teacher_only:  # one teacher trained (e.g. both at once in two processes); the students come later
        return {"teacher": specs[args.teacher_only]["checkpoint"]}
    teachers = teacher_scores(args, data, specs)
    print(f"teachers ({time.perf_counter() - start:.0f} s): {teachers}", flush=True)
    for head in below_chance(teachers):
        print(f"WARNING: the {head} teacher is not 10 points above chance on the test split; the comparison of its "
              "head says nothing", flush=True)  # fmt: skip
    split = {h: head_parameters(student(args, args.single_width, specs, (h,)).student, (h,)) for h in ("cls", "seg")}
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS if arm in args.arms}
    for seed in args.seeds:
        for arm in results:
            results[arm].append(run_arm(arm, seed, args, data, specs))
            print(f"seed {seed} {arm}: {results[arm][-1]} ({time.perf_counter() - start:.0f} s)", flush=True)
        if args.json:  # after every seed: a run stopped early keeps what it measured
            partial = {"teachers": teachers, "results": results, "split": split, "seeds_done": seed}
            Path(args.json).write_text(json.dumps(partial, indent=2))
    seconds = time.perf_counter() - start
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); {seconds:.0f} s\n")
    print(table(results, teachers, split))
    print(f"\n{per_seed(results)}")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"\ncommand: {command}")
    summary = {"teachers": teachers, "results": results, "split": split, "seconds": seconds, "command": command}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
