"""Does `SaliencyAlignment` raise the student's agreement with the teacher's saliency, compared with KD alone?

On the shapes classification data, for each seed, trains two students from the same initialisation, data order and
budget — (a) KD only, (b) KD + SaliencyAlignment — and prints, for each, the test accuracy and the teacher
agreement of the student's Grad-CAM on held-out images (`visiondistill.explain.agreement.saliency_teacher_agreement`:
pearson, topk_iou …, the teacher's predictions explained, both CAMs at ``--layer``), plus the median training-step time
of (b) over (a). The teacher is read from ``--teacher`` (a ClassificationTask checkpoint) or, when that file does not
exist, trained first for ``--teacher-epochs`` epochs.

    python benchmarks/saliency_alignment.py --epochs 3 --seeds 0
    python benchmarks/saliency_alignment.py --epochs 20 --seeds 0 1 2 --accelerator gpu --num-workers 4
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from visiondistill.core.saliency import ClassificationSaliencyAdapter
from visiondistill.data import ShapesClassification
from visiondistill.distill import LogitDistillation, SaliencyAlignment
from visiondistill.explain.agreement import saliency_teacher_agreement
from visiondistill.models import ClassifierSpec
from visiondistill.reporting.document import markdown_table
from visiondistill.tasks import ClassificationTask

from _common import StepTimer, quiet_trainer

warnings.filterwarnings("ignore")


def trainer_for(args: argparse.Namespace, epochs: int, callbacks: list) -> pl.Trainer:
    return quiet_trainer(
        callbacks,
        max_epochs=epochs,
        accelerator=args.accelerator,
        limit_train_batches=args.limit_train_batches,
        deterministic=False,
    )


def teacher_checkpoint(args: argparse.Namespace, data: ShapesClassification) -> str:
    path = Path(args.teacher)
    if path.is_file():
        return str(path)
    print(f"{path} not found: training a {args.teacher_name} teacher for {args.teacher_epochs} epochs")
    pl.seed_everything(0, verbose=False)
    task = ClassificationTask(student=ClassifierSpec(name=args.teacher_name), num_classes=6, lr=0.002)
    trainer = trainer_for(args, args.teacher_epochs, [])
    trainer.fit(task, datamodule=data)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return str(path)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ShapesClassification) -> float:
    model = model.eval().cpu()
    correct = total = 0
    for images, targets in data.test_dataloader():
        correct += int((model(images).argmax(-1) == targets).sum())
        total += len(targets)
    return correct / max(total, 1)


def probe_images(data: ShapesClassification, count: int) -> torch.Tensor:
    images = []
    for batch, _ in data.test_dataloader():
        images.append(batch)
        if sum(len(b) for b in images) >= count:
            break
    return torch.cat(images)[:count]


def run(args: argparse.Namespace, data: ShapesClassification, checkpoint: str, seed: int, align: bool) -> dict:
    pl.seed_everything(seed, verbose=False)
    task = ClassificationTask(
        student=ClassifierSpec(name=args.student),
        teacher=ClassifierSpec(checkpoint=checkpoint),
        num_classes=6,
        lr=args.lr,
    )
    timer = StepTimer()
    callbacks: list = [LogitDistillation(temperature=4.0, weight=1.0), timer]
    if align:
        callbacks.insert(
            1,
            SaliencyAlignment(
                student_layer=args.layer, teacher_layer=args.layer, distance=args.distance, weight=args.weight
            ),
        )
    trainer_for(args, args.epochs, callbacks).fit(task, datamodule=data)
    images = probe_images(data, args.probe)
    agreement = saliency_teacher_agreement(
        ClassificationSaliencyAdapter(),
        task.teacher,
        task.student,
        images,
        teacher_layers=[args.layer],
        student_layers=[args.layer],
    )
    warm = timer.times[min(5, len(timer.times) - 1) :]
    return {
        "seed": seed,
        "students": "KD + SaliencyAlignment" if align else "KD",
        "acc": round(accuracy(task.student, data), 4),
        "pearson": round(agreement["pearson"], 4),
        "topk_iou": round(agreement["topk_iou"], 4),
        "cosine": round(agreement["cosine"], 4),
        "step_ms": round(1000 * statistics.median(warm), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="runs/classification/teacher/checkpoints/best.ckpt")
    parser.add_argument("--teacher-name", default="resnet18", help="architecture when the teacher must be trained")
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data-dir", default="data/shapes")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--limit-train-batches", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--layer", type=int, default=-2, help="stage index of both CAMs (trained and measured)")
    parser.add_argument("--distance", default="cosine", choices=["cosine", "mse"])
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the SaliencyAlignment term")
    parser.add_argument("--probe", type=int, default=128, help="held-out images for the agreement measurement")
    args = parser.parse_args()

    data = ShapesClassification(
        data_dir=args.data_dir, image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers
    )
    checkpoint = teacher_checkpoint(args, data)
    data.prepare_data()
    data.setup("test")  # accuracy and agreement are measured on the test split
    rows = []
    for seed in args.seeds:
        for align in (False, True):
            rows.append(run(args, data, checkpoint, seed, align))
            print(rows[-1], flush=True)
    device = torch.cuda.get_device_name() if args.accelerator != "cpu" and torch.cuda.is_available() else "CPU"
    print(
        f"\ndevice: {device} ({torch.get_num_threads()} threads); student {args.student}; teacher {checkpoint}; "
        f"{args.epochs} epochs; layer {args.layer}; distance {args.distance}; weight {args.weight}; "
        f"agreement on {args.probe} test images\n"
    )
    print(markdown_table(rows))
    for label in ("pearson", "topk_iou", "acc"):
        kd = statistics.mean(r[label] for r in rows if r["students"] == "KD")
        sa = statistics.mean(r[label] for r in rows if r["students"] != "KD")
        print(f"mean {label}: KD {kd:.4f} → KD + SaliencyAlignment {sa:.4f} ({sa - kd:+.4f})")
    kd_ms = statistics.mean(r["step_ms"] for r in rows if r["students"] == "KD")
    sa_ms = statistics.mean(r["step_ms"] for r in rows if r["students"] != "KD")
    print(f"step-time ratio (KD + SaliencyAlignment) / KD: {sa_ms / kd_ms:.2f}")


if __name__ == "__main__":
    main()
