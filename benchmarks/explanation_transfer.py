"""Does the student explain like the teacher? Scratch, KD, KD + attention transfer, KD + SaliencyAlignment, measured.

For each data set (the synthetic shapes, and scikit-learn's handwritten digits: 8×8 grey images upscaled to
``--image-size`` px, 3 channels), one teacher is trained on **all** training labels (seed 0) and a second one with
another seed (the agreement *ceiling*: what two equally trained networks reach). Then, for each labeled fraction
(``--fractions``, default 5 % and 100 %) and each seed, four students of one small architecture are trained from
the same initialisation, data order and number of optimiser steps, on the same stratified labeled subset
(`visiondistill.data.unlabeled.stratified_split`, seeded by the seed); the distillation terms see that subset only
(e²KD's data-scarce setting), through a real Lightning Trainer and the library's callbacks:

  scratch         cross-entropy only;
  KD              + `LogitDistillation` (T = 4);
  KD + AT         + `LogitDistillation` + `AttentionTransfer` (stages ``--at-layers``);
  KD + SA         + `LogitDistillation` + `SaliencyAlignment` (Grad-CAM at ``--layer``, cosine);

plus the *floor*, a randomly initialised student (`visiondistill.explain.sanity.randomise_`, seeded by the seed).

Measured on the first ``--images`` test images (accuracy on the whole test split), every model explaining the
teacher's prediction, with the library's functions: agreement with the teacher (`saliency_agreement_per_image`:
Pearson, Spearman, top-10 % IoU) for a CAM method (``gradcam`` at ``--layer``) and a Captum method
(``integrated_gradients``, zero baseline) through `visiondistill.explain.attribution.network_maps`; faithfulness of
each model's own maps (deletion and insertion AUC of class probabilities, `visiondistill.explain.faithfulness`);
robustness (Captum's max-sensitivity, `visiondistill.explain.robustness.max_sensitivity`, on the first
``--robustness-images``). Cells: mean ± std over seeds of the per-seed means, and a bootstrap 95 % CI over images
(`visiondistill.reporting.sections.explanations.bootstrap_ci`) of each image's mean over seeds. Prints one Markdown
table per data set and fraction and writes every number (per seed too) to ``--out``.

    python benchmarks/explanation_transfer.py --seeds 0 1 2 --out runs/explanation_transfer.json
    python benchmarks/explanation_transfer.py --smoke            # seconds: a few images, a few steps, one seed
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from visiondistill.core.saliency import ClassificationSaliencyAdapter
from visiondistill.data import ShapesClassification
from visiondistill.data.unlabeled import stratified_split
from visiondistill.distill import AttentionTransfer, LogitDistillation, SaliencyAlignment
from visiondistill.explain.attribution import network_maps
from visiondistill.explain.faithfulness import area_under_curve, perturbation_curves, probability_targets
from visiondistill.explain.metrics import saliency_agreement_per_image
from visiondistill.explain.probe import untouched_training_state
from visiondistill.explain.robustness import max_sensitivity
from visiondistill.explain.sanity import randomise_
from visiondistill.models import ClassifierSpec
from visiondistill.reporting.sections.explanations import bootstrap_ci
from visiondistill.tasks import ClassificationTask

from _common import quiet_trainer

warnings.filterwarnings("ignore")
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)  # one line per trained model is enough

STUDENTS = ("scratch", "KD", "KD + AT", "KD + SA")
BASELINES = ("teacher", "ceiling (2nd teacher)", "floor (random student)")
METHODS = ("gradcam", "integrated_gradients")
AGREEMENT_KEYS = ("pearson", "spearman", "topk_iou")
#: Columns of the printed table: (JSON key, header).
COLUMNS = (
    ("acc", "acc"),
    ("gradcam/pearson", "Grad-CAM pearson"),
    ("integrated_gradients/pearson", "IG pearson"),
    ("gradcam/deletion_auc", "del. AUC ↓ (CAM)"),
    ("gradcam/insertion_auc", "ins. AUC ↑ (CAM)"),
    ("integrated_gradients/deletion_auc", "del. AUC ↓ (IG)"),
    ("integrated_gradients/insertion_auc", "ins. AUC ↑ (IG)"),
    ("gradcam/max_sensitivity", "max-sens. ↓ (CAM)"),
    ("integrated_gradients/max_sensitivity", "max-sens. ↓ (IG)"),
)


@dataclass
class Settings:
    """What the benchmark trains and measures (the command-line options)."""

    datasets: tuple[str, ...] = ("shapes", "digits")
    fractions: tuple[float, ...] = (0.05, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    student: str = "test_resnet"
    teacher: str = "test_resnet"
    image_size: int = 32
    steps: int = 60
    teacher_steps: int = 300
    batch_size: int = 32
    lr: float = 0.003
    layer: int = -4
    at_layers: tuple[int, ...] = (-4, -3)
    at_weight: float = 25.0
    sa_weight: float = 1.0
    images: int = 64
    robustness_images: int = 16
    ig_steps: int = 16
    sensitivity_samples: int = 5
    bootstrap: int = 1000
    num_train: int = 1200
    num_test: int = 300
    difficulty: float = 0.5
    data_dir: str = "/tmp/visiondistill-explanation-transfer"


def smoke_settings(**overrides: Any) -> Settings:
    """A seconds-long configuration for tests: tiny data, a few steps, a few images, one seed."""
    values = dict(
        datasets=("digits",),
        fractions=(0.5, 1.0),
        seeds=(0,),
        teacher="test_resnet",
        steps=2,
        teacher_steps=3,
        batch_size=16,
        images=4,
        robustness_images=2,
        ig_steps=2,
        sensitivity_samples=2,
        bootstrap=50,
        num_train=120,
        num_test=40,
    )
    return Settings(**(values | overrides))


# ----------------------------------------------------------------------------------------------------- data


def _normalise(images: Tensor) -> Tensor:
    """[0, 1] images to the ImageNet statistics every visiondistill pipeline uses."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std


def digits_tensors(settings: Settings) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """scikit-learn's 1797 handwritten digits, upscaled bilinearly, 3 channels; a stratified, seeded test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    images = nn.functional.interpolate(images, size=settings.image_size, mode="bilinear", align_corners=False)
    images = _normalise(images.clamp(0, 1).expand(-1, 3, -1, -1).contiguous())
    labels = torch.from_numpy(digits.target).long()
    test_share = min(0.5, settings.num_test / len(labels))
    test, train = stratified_split(labels.tolist(), test_share, seed=1234)
    train = train[: settings.num_train]
    return images[train], labels[train], images[test], labels[test], 10


def shapes_tensors(settings: Settings) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """The generated shapes (`ShapesClassification` at ``difficulty``), read once without augmentation."""
    data = ShapesClassification(
        str(
            Path(settings.data_dir)
            / f"shapes{settings.image_size}-{settings.num_train}-{settings.num_test}-{settings.difficulty:g}"
        ),
        image_size=settings.image_size,
        batch_size=settings.batch_size,
        num_workers=0,
        augment=False,
        num_train=settings.num_train,
        num_val=max(10, settings.num_test // 5),
        num_test=settings.num_test,
        difficulty=settings.difficulty,
    )
    data.prepare_data()
    data.setup("fit")
    data.setup("test")

    def stack(dataset: Any) -> tuple[Tensor, Tensor]:
        pairs = [dataset[i] for i in range(len(dataset))]
        return torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])

    return *stack(data.train_dataset), *stack(data.test_dataset), len(data.class_names)


DATASETS = {"shapes": shapes_tensors, "digits": digits_tensors}


# ------------------------------------------------------------------------------------------------- training


def _trainer(steps: int, callbacks: list) -> pl.Trainer:
    return quiet_trainer(callbacks, max_steps=steps, limit_val_batches=0)


def _loader(images: Tensor, labels: Tensor, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(images, labels), batch_size=min(batch_size, len(labels)), shuffle=True, generator=generator
    )


def train_teacher(
    settings: Settings, train: tuple[Tensor, Tensor], num_classes: int, seed: int, path: Path
) -> nn.Module:
    """A teacher on every training label; its weights are written to ``path`` (read back by the students' tasks).

    A file already at ``path`` (the same data set, architecture, image size, steps and seed: its name says so) is
    read instead of training again.
    """
    pl.seed_everything(seed, verbose=False)
    task = ClassificationTask(
        student=ClassifierSpec(name=settings.teacher), num_classes=num_classes, lr=settings.lr, warmup_epochs=0.1
    )
    if path.is_file():
        task.student.load_state_dict(torch.load(path, map_location="cpu"))
        return task.student.eval()
    _trainer(settings.teacher_steps, []).fit(task, _loader(*train, settings.batch_size, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(task.student.state_dict(), path)
    return task.student.eval()


def distillation_callbacks(arm: str, settings: Settings) -> list[pl.Callback]:
    """The library's distillation callbacks of one student arm."""
    if arm == "scratch":
        return []
    callbacks: list[pl.Callback] = [LogitDistillation(temperature=4.0, weight=1.0)]
    if arm == "KD + AT":
        layers = list(settings.at_layers)
        callbacks.append(AttentionTransfer(student_layers=layers, teacher_layers=layers, weight=settings.at_weight))
    elif arm == "KD + SA":
        callbacks.append(
            SaliencyAlignment(
                student_layer=settings.layer, teacher_layer=settings.layer, distance="cosine", weight=settings.sa_weight
            )
        )
    return callbacks


def train_student(
    arm: str, settings: Settings, train: tuple[Tensor, Tensor], num_classes: int, teacher_path: Path, seed: int
) -> nn.Module:
    """One student arm: same initialisation (seed), data order and steps for every arm."""
    pl.seed_everything(seed, verbose=False)
    teacher = None if arm == "scratch" else ClassifierSpec(name=settings.teacher, checkpoint=str(teacher_path))
    task = ClassificationTask(
        student=ClassifierSpec(name=settings.student),
        teacher=teacher,
        num_classes=num_classes,
        lr=settings.lr,
        warmup_epochs=0.1,
    )
    _trainer(settings.steps, distillation_callbacks(arm, settings)).fit(
        task, _loader(*train, settings.batch_size, seed)
    )
    return task.student.eval()


# -------------------------------------------------------------------------------------------------- measures


@torch.no_grad()
def accuracy(network: nn.Module, images: Tensor, labels: Tensor) -> float:
    network.eval()
    predictions = torch.cat([network(chunk).argmax(-1) for chunk in images.split(128)])
    return float((predictions == labels).float().mean())


def explain(network: nn.Module, method: str, images: Tensor, targets: list, settings: Settings) -> Tensor:
    """One model's maps by the library's `network_maps` (training state and gradients left untouched)."""
    options = {"n_steps": settings.ig_steps} if method != "gradcam" else {}
    with untouched_training_state([network]):
        return network_maps(
            ClassificationSaliencyAdapter(), network, method, images, targets, [settings.layer], **options
        )


def model_measures(
    network: nn.Module,
    maps: dict[str, Tensor],
    teacher_maps: dict[str, Tensor] | None,
    images: Tensor,
    targets: list,
    settings: Settings,
) -> dict[str, Tensor]:
    """Per-image values of one model: agreement with the teacher, deletion / insertion AUC, max-sensitivity."""
    values: dict[str, Tensor] = {}
    probabilities = probability_targets(targets)
    robust = min(settings.robustness_images, len(images))
    for method in METHODS:
        if teacher_maps is not None:
            per_image = saliency_agreement_per_image(teacher_maps[method], maps[method])
            values |= {f"{method}/{key}": per_image[key].float() for key in AGREEMENT_KEYS}
        with untouched_training_state([network]):
            for mode in ("deletion", "insertion"):
                curves = perturbation_curves(network.eval(), images, maps[method], probabilities, mode, steps=16)
                values[f"{method}/{mode}_auc"] = area_under_curve(curves).float()
        values[f"{method}/max_sensitivity"] = max_sensitivity(
            lambda x, t, method=method: explain(network, method, x, list(t), settings),
            images[:robust],
            targets[:robust],
            radius=0.02,
            n_samples=settings.sensitivity_samples,
            seed=0,
        )
    return values


def measure(
    network: nn.Module,
    test: tuple[Tensor, Tensor],
    images: Tensor,
    targets: list,
    teacher_maps: dict[str, Tensor] | None,
    settings: Settings,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Accuracy and per-image measures of one network; and its maps."""
    maps = {method: explain(network, method, images, targets, settings) for method in METHODS}
    values = model_measures(network, maps, teacher_maps, images, targets, settings)
    values["acc"] = torch.tensor([accuracy(network, *test)])
    return values, maps


def summarise(per_seed: list[dict[str, Tensor]], bootstrap: int) -> dict[str, dict[str, float]]:
    """Mean ± std over seeds of each seed's mean, and a bootstrap CI over images of each image's mean over seeds.

    Args:
        per_seed: One dict per seed: key → per-image values (``acc``: one value).
        bootstrap: Bootstrap resamples.

    Returns:
        key → ``{"mean", "std", "low", "high", "seeds"}`` (``std`` 0 for one seed; no interval for ``acc``).
    """
    result = {}
    for key in per_seed[0]:
        stacked = torch.stack([values[key].double() for values in per_seed])  # seeds × images
        seed_means = [float(row[torch.isfinite(row)].mean()) for row in stacked]
        entry = {
            "mean": statistics.fmean(seed_means),
            "std": statistics.stdev(seed_means) if len(seed_means) > 1 else 0.0,
            "seeds": seed_means,
        }
        if stacked.shape[1] > 1:
            _, entry["low"], entry["high"] = bootstrap_ci(stacked.nanmean(dim=0), resamples=bootstrap, seed=0)
        result[key] = entry
    return result


def format_cell(entry: dict[str, Any] | None) -> str:
    """``mean ± std [low, high]`` (the interval when there is one), ``–`` when not measured."""
    if entry is None or not math.isfinite(entry["mean"]):
        return "–"
    text = f"{entry['mean']:.3f} ± {entry['std']:.3f}"
    return text + (f" [{entry['low']:.2f}, {entry['high']:.2f}]" if "low" in entry else "")


def table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One Markdown table: a row per model, a column per `COLUMNS` entry."""
    header = ["model", *[title for _, title in COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, summary in rows.items():
        lines.append("| " + " | ".join([model, *[format_cell(summary.get(key)) for key, _ in COLUMNS]]) + " |")
    return "\n".join(lines)


def run_dataset(name: str, settings: Settings, log: Any = print) -> dict[str, Any]:
    """Teachers, students and measures of one data set; the summaries per fraction."""
    started = time.perf_counter()
    torch.manual_seed(0)
    train_images, train_labels, test_images, test_labels, classes = DATASETS[name](settings)
    root = Path(settings.data_dir) / "teachers"
    parts = (name, settings.teacher, settings.image_size, settings.num_train, settings.teacher_steps, settings.lr)
    tag = "-".join(str(part) for part in parts)
    teacher = train_teacher(settings, (train_images, train_labels), classes, 0, root / f"{tag}-seed0.pt")
    ceiling = train_teacher(settings, (train_images, train_labels), classes, 1, root / f"{tag}-seed1.pt")
    test = (test_images, test_labels)
    images = test_images[: settings.images]
    adapter = ClassificationSaliencyAdapter()
    targets = adapter.targets(adapter.predict(teacher, images), (images, test_labels[: settings.images]))
    teacher_values, teacher_maps = measure(teacher, test, images, targets, None, settings)
    ceiling_values, _ = measure(ceiling, test, images, targets, teacher_maps, settings)
    log(
        f"{name}: {len(train_labels)} training / {len(test_labels)} test images, {classes} classes; teacher "
        f"{settings.teacher} acc {float(teacher_values['acc']):.3f}, ceiling acc {float(ceiling_values['acc']):.3f} "
        f"({time.perf_counter() - started:.0f} s)"
    )
    if float(teacher_values["acc"]) < 1.5 / classes:
        log(f"WARNING: the {name} teacher is near chance ({1 / classes:.3f}): its explanations say nothing to copy")
    result: dict[str, Any] = {"train_images": len(train_labels), "test_images": len(test_labels), "fractions": {}}
    for fraction in settings.fractions:
        per_model: dict[str, list[dict[str, Tensor]]] = {m: [] for m in (*STUDENTS, "floor (random student)")}
        labeled = len(train_labels)
        for seed in settings.seeds:
            subset = stratified_split(train_labels.tolist(), fraction, seed)[0] if fraction < 1 else None
            train = (train_images, train_labels) if subset is None else (train_images[subset], train_labels[subset])
            labeled = len(train[1])
            for arm in STUDENTS:
                t0 = time.perf_counter()
                student = train_student(arm, settings, train, classes, root / f"{tag}-seed0.pt", seed)
                values, _ = measure(student, test, images, targets, teacher_maps, settings)
                per_model[arm].append(values)
                log(
                    f"  {name} {fraction:.0%} seed {seed} {arm}: acc {float(values['acc']):.3f}, gradcam pearson "
                    f"{float(values['gradcam/pearson'].mean()):.3f}, IG pearson "
                    f"{float(values['integrated_gradients/pearson'].mean()):.3f} ({time.perf_counter() - t0:.0f} s)"
                )
                if arm == "scratch":
                    floor = randomise_(copy.deepcopy(student), seed=seed).eval()
                    per_model["floor (random student)"].append(
                        measure(floor, test, images, targets, teacher_maps, settings)[0]
                    )
        rows = {
            "teacher": summarise([teacher_values], settings.bootstrap),
            "ceiling (2nd teacher)": summarise([ceiling_values], settings.bootstrap),
        }
        rows |= {model: summarise(values, settings.bootstrap) for model, values in per_model.items()}
        result["fractions"][f"{fraction:g}"] = {"labeled_images": labeled, "rows": rows}
        log(f"\n### {name}, {fraction:.0%} of the labels ({labeled} labeled training images)\n\n{table(rows)}\n")
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def run_benchmark(settings: Settings, log: Any = print) -> dict[str, Any]:
    """Every data set of ``settings``; the JSON-ready results (settings, timings, summaries)."""
    started = time.perf_counter()
    results = {name: run_dataset(name, settings, log) for name in settings.datasets}
    return {
        "settings": asdict(settings),
        "machine": f"CPU, {torch.get_num_threads()} torch thread(s)",
        "seconds": round(time.perf_counter() - started, 1),
        "datasets": results,
    }


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, str | None, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    parser.add_argument("--datasets", nargs="+", default=list(defaults.datasets), choices=sorted(DATASETS))
    parser.add_argument("--fractions", type=float, nargs="+", default=list(defaults.fractions))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    for option in ("student", "teacher", "data_dir"):
        parser.add_argument(f"--{option.replace('_', '-')}", default=getattr(defaults, option))
    for option in (
        "image_size",
        "steps",
        "teacher_steps",
        "batch_size",
        "layer",
        "images",
        "robustness_images",
        "ig_steps",
        "sensitivity_samples",
        "bootstrap",
        "num_train",
        "num_test",
    ):
        parser.add_argument(f"--{option.replace('_', '-')}", type=int, default=getattr(defaults, option))
    parser.add_argument("--at-layers", type=int, nargs="+", default=list(defaults.at_layers))
    for option in ("lr", "at_weight", "sa_weight", "difficulty"):
        parser.add_argument(f"--{option.replace('_', '-')}", type=float, default=getattr(defaults, option))
    parser.add_argument("--smoke", action="store_true", help="seconds-long run (tiny data, 1 seed) to check it works")
    parser.add_argument("--out", help="write the results JSON here")
    parser.add_argument("--threads", type=int, default=1)
    args = vars(parser.parse_args(argv))
    out, threads, smoke = args.pop("out"), args.pop("threads"), args.pop("smoke")
    for key in ("datasets", "fractions", "seeds", "at_layers"):
        args[key] = tuple(args[key])
    return (smoke_settings() if smoke else Settings(**args)), out, threads


def main(argv: Sequence[str] | None = None) -> None:
    settings, out, threads = parse_args(argv)
    torch.set_num_threads(threads)
    results = run_benchmark(settings, lambda text: print(text, flush=True))
    results["command"] = "python " + shlex.join(["benchmarks/explanation_transfer.py", *(argv or sys.argv[1:])])
    print(f"\ntotal {results['seconds']:.0f} s on {results['machine']}; {results['command']}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
