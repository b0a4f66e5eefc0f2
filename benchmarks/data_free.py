"""Data-free distillation: how much of KD-on-real-data do DeepInversion and a DAFL generator recover? Four arms.

For each data set (the synthetic shapes, and scikit-learn's handwritten digits: 8×8 grey images upscaled to
``--image-size``, 3 channels, a stratified held-out test split) one teacher is trained on the real training split
(seed 0) and its test accuracy printed: the result means something only when it is well above chance. Then, for
each seed, a student of a smaller architecture is scored on the held-out test split (top-1 accuracy) after:

  scratch, no data   no training at all (there are no images to train on): chance, the floor;
  DeepInversion KD   ``--steps`` optimiser steps on DeepInversion batches synthesised from the teacher
                     (`DataFreeClassification`, ``--iterations`` pixel-optimisation steps per batch);
  DAFL KD            ``--steps`` steps on batches of a DAFL generator trained alongside the student
                     (`DAFLDataFreeClassification`, one generator update per batch);
  KD, real data      ``--steps`` steps on the real training images, cross-entropy + logit KD.

The data-free arms use ``task_weight 0`` (the logit KD term alone teaches, temperature 4). Prints one line per
run (accuracy, seconds), then mean ± std over the seeds per data set and the command that reproduced it.

    python benchmarks/data_free.py [--datasets shapes digits] [--seeds 0 1 2] [--steps 150] [--iterations 50]
        [--image-size 32] [--teacher-epochs 8] [--data-dir /tmp/visiondistill-datafree] [--threads 1]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from visiondistill.data import DAFLDataFreeClassification, DataFreeClassification, ShapesClassification
from visiondistill.data.unlabeled import stratified_split
from visiondistill.distill import LogitDistillation
from visiondistill.tasks import ClassificationTask

from _common import quiet_trainer

warnings.filterwarnings("ignore")

ARMS = ("scratch, no data", "DeepInversion KD", "DAFL KD", "KD, real data")
Split = tuple[Tensor, Tensor, Tensor, Tensor, int]


def trainer(steps: int | None = None, epochs: int | None = None, callbacks: list | None = None) -> pl.Trainer:
    return quiet_trainer(
        callbacks or [], max_steps=steps if steps is not None else -1, max_epochs=epochs, limit_val_batches=0
    )


def _normalise(images: Tensor) -> Tensor:
    """[0, 1] images to the ImageNet statistics the shapes pipeline and the data-free datamodules assume."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std


def digits(args: argparse.Namespace) -> Split:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images).float().unsqueeze(1) / 16.0
    images = nn.functional.interpolate(images, size=args.image_size, mode="bilinear", align_corners=False)
    images = _normalise(images.clamp(0, 1).expand(-1, 3, -1, -1).contiguous())
    labels = torch.from_numpy(data.target).long()
    test, train = stratified_split(labels.tolist(), min(0.5, args.num_test / len(labels)), seed=1234)
    train = train[: args.num_train]
    return images[train], labels[train], images[test], labels[test], 10


def shapes(args: argparse.Namespace) -> Split:
    root = Path(args.data_dir) / f"shapes{args.image_size}-{args.num_train}-{args.num_test}-{args.difficulty:g}"
    data = ShapesClassification(
        str(root), image_size=args.image_size, num_workers=0, augment=False, num_train=args.num_train,
        num_val=10, num_test=args.num_test, difficulty=args.difficulty,
    )  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    data.setup("test")

    def stack(dataset: object) -> tuple[Tensor, Tensor]:
        pairs = [dataset[i] for i in range(len(dataset))]  # type: ignore[index, arg-type]
        return torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])

    return *stack(data.train_dataset), *stack(data.test_dataset), len(data.class_names)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(256)])
    return float((predicted == labels).float().mean())


def loader(images: Tensor, labels: Tensor, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True, generator=generator)


def train_teacher(name: str, split: Split, args: argparse.Namespace) -> Path:
    settings = f"{args.teacher}_{args.image_size}px_{args.teacher_epochs}ep_lr{args.teacher_lr:g}" + (
        f"_d{args.difficulty:g}" if name == "shapes" else ""
    )
    path = Path(args.data_dir) / f"teacher_{name}_{settings}.ckpt"
    if path.is_file():
        return path
    pl.seed_everything(0, workers=True)
    task = ClassificationTask(
        student={"name": args.teacher}, num_classes=split[4], lr=args.teacher_lr, warmup_epochs=0.5
    )
    fit = trainer(epochs=args.teacher_epochs)
    fit.fit(task, loader(split[0], split[1], args.batch_size, 0))
    fit.save_checkpoint(path)
    return path


def run_student(arm: str, split: Split, teacher: Path, seed: int, args: argparse.Namespace) -> float:
    train_x, train_y, test_x, test_y, num_classes = split
    pl.seed_everything(seed, workers=True)
    if arm == ARMS[0]:
        return accuracy(
            ClassificationTask(student={"name": args.student}, num_classes=num_classes).student, test_x, test_y
        )
    real = arm == ARMS[3]
    task = ClassificationTask(
        student={"name": args.student},
        teacher={"checkpoint": str(teacher)},
        num_classes=num_classes,
        lr=0.003,
        warmup_epochs=0.1,
        task_weight=1.0 if real else 0.0,
    )
    common = {"num_classes": num_classes, "image_size": args.image_size, "batch_size": args.batch_size}
    common |= {"batches_per_epoch": args.steps, "seed": seed, "save_grid": False}
    fit = trainer(steps=args.steps, callbacks=[LogitDistillation(temperature=4.0)])
    if real:
        fit.fit(task, loader(train_x, train_y, args.batch_size, seed))
    elif arm == ARMS[1]:
        fit.fit(task, datamodule=DataFreeClassification(iterations=args.iterations, **common))
    else:
        fit.fit(task, datamodule=DAFLDataFreeClassification(generator_lr=args.generator_lr, **common))
    return accuracy(task.student, test_x, test_y)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["shapes", "digits"], choices=["shapes", "digits"])
    parser.add_argument("--arms", nargs="+", default=list(range(len(ARMS))), type=int, help="indices into ARMS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps of every trained student")
    parser.add_argument("--iterations", type=int, default=50, help="DeepInversion steps per synthesised batch")
    parser.add_argument("--generator-lr", type=float, default=0.02, help="DAFL generator's Adam learning rate")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--difficulty", type=float, default=0.0, help="shapes generator difficulty (0: clean)")
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--teacher-lr", type=float, default=0.002)
    parser.add_argument("--data-dir", default="/tmp/visiondistill-datafree")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no spinning when busy)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    arms = [ARMS[i] for i in args.arms]
    start = time.perf_counter()
    tables = []
    for name in args.datasets:
        split = {"shapes": shapes, "digits": digits}[name](args)
        teacher = train_teacher(name, split, args)
        teacher_task = ClassificationTask(student={"name": args.teacher}, num_classes=split[4])
        teacher_task.load_state_dict(torch.load(teacher, weights_only=True)["state_dict"])
        teacher_score = accuracy(teacher_task.student, split[2], split[3])
        print(
            f"{name}: teacher {args.teacher} test accuracy {teacher_score:.4f} (chance {1 / split[4]:.3f})", flush=True
        )
        scores: dict[str, list[float]] = {arm: [] for arm in arms}
        for seed in args.seeds:
            for arm in arms:
                began = time.perf_counter()
                scores[arm].append(run_student(arm, split, teacher, seed, args))
                seconds = time.perf_counter() - began
                print(f"{name} seed {seed} {arm}: {scores[arm][-1]:.4f} ({seconds:.0f} s)", flush=True)
        cells = []
        for arm in arms:
            values = [100 * v for v in scores[arm]]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        tables.append(f"| {name} | {100 * teacher_score:.1f} | " + " | ".join(cells) + " |")
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); {time.perf_counter() - start:.0f} s\n")
    print("| data | teacher (real data) | " + " | ".join(arms) + " |")
    print("| --- " * (len(arms) + 2) + "|")
    print("\n".join(tables))
    print("\ncommand: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
