"""Tiny multi-task pieces shared by tests of several packages: teachers, a module builder, multi-task batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from visiondistill.models.classifiers import ClassifierSpec, create_classifier
from visiondistill.models.segmenters import SegmenterSpec, create_segmenter
from visiondistill.tasks import MultiTaskModule

ROOT = Path(__file__).resolve().parents[2]

#: One teacher per head: a tiny timm classifier and a tiny U-Net.
CLS_TEACHER = {"id": "cls_t", "head": "cls", "name": "test_resnet"}
SEG_TEACHER = {
    "id": "seg_t",
    "head": "seg",
    "arch": "Unet",
    "encoder_name": "tu-test_resnet",
    "kwargs": {"decoder_channels": [16, 8, 8, 8, 8]},
}


def tiny_multitask(**changes: Any) -> MultiTaskModule:
    """A multi-task module on test_resnet (3 classes, 4 segmentation classes) with both teachers, unless changed."""
    args = {
        "backbone": "test_resnet",
        "num_classes": 3,
        "num_seg_classes": 4,
        "teachers": [CLS_TEACHER, SEG_TEACHER],
        "decoder_channels": 8,
    }
    return MultiTaskModule(**(args | changes))


class SquaresWithClass(Dataset):
    """32-px images with one bright square each; its class labels both the image (``label``) and its pixels."""

    def __init__(self, n: int = 16, size: int = 32, num_classes: int = 3, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = 0.1 * torch.randn(n, 3, size, size, generator=generator)
        self.masks = torch.zeros(n, size, size, dtype=torch.long)
        self.labels = torch.arange(n) % num_classes
        for i in range(n):
            top, left = (int(v) for v in torch.randint(0, size - 10, (2,), generator=generator))
            self.images[i, :, top : top + 10, left : left + 10] += float(self.labels[i] + 1)
            self.masks[i, top : top + 10, left : left + 10] = self.labels[i] + 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "mask": self.masks[index], "label": self.labels[index]}


def multitask_loader(n: int = 16, batch_size: int = 8) -> DataLoader:
    """Batches ``{"image", "mask", "label"}`` of `SquaresWithClass` (3 classes, 4 segmentation classes)."""
    return DataLoader(SquaresWithClass(n), batch_size=batch_size)


def saved_teachers(
    folder: Path, num_classes: int = 3, num_seg_classes: int = 4, ids: tuple[str, ...] | list[str] = ("cls_t", "seg_t")
) -> list[dict[str, Any]]:
    """`CLS_TEACHER` and `SEG_TEACHER` (as ``ids``), seeded random weights saved as plain state dicts in ``folder``.

    Returns their ``teachers`` entries with a ``checkpoint`` each, which a run then records as its teachers'.
    """
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    teachers = []
    for spec, teacher_id, factory, classes in (
        (CLS_TEACHER, ids[0], create_classifier, num_classes),
        (SEG_TEACHER, ids[1], create_segmenter, num_seg_classes),
    ):
        fields = {k: v for k, v in spec.items() if k not in ("id", "head")}
        spec_class = ClassifierSpec if factory is create_classifier else SegmenterSpec
        path = folder / f"{teacher_id}.pt"
        torch.save(factory(spec_class.coerce(fields), classes, "teacher").state_dict(), path)
        teachers.append(spec | {"id": teacher_id, "checkpoint": str(path)})
    return teachers


def multitask_config(root: Path, name: str = "multitask_kd", distilled: bool = True, max_epochs: int = 1) -> Path:
    """configs/multitask/shapes_multitask.yaml shrunk to seconds: the tiny teachers above (their weights saved as
    plain state dicts under ``root/teachers``, so the run records real teacher checkpoints), 32-px shapes (8 train,
    4 val, 8 test images), a TensorBoard run folder ``root/runs/<name>``; ``distilled=False``: no teachers, no terms.
    """
    data = yaml.safe_load((ROOT / "configs/multitask/shapes_multitask.yaml").read_text())
    init = data["model"]["init_args"]
    ids = [teacher["id"] for teacher in init["teachers"]]
    teachers = saved_teachers(root / "teachers", 6, 7, ids) if distilled else []
    init.update(decoder_channels=8, teachers=teachers or None, warmup_epochs=0)
    data["data"]["init_args"].update(
        data_dir=str(root / "shapes"), image_size=32, batch_size=4, num_workers=0, num_train=8, num_val=4,
        num_test=8,
    )  # fmt: skip
    data["trainer"].update(
        max_epochs=max_epochs, log_every_n_steps=1, num_sanity_val_steps=0, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    data["trainer"]["logger"]["init_args"].update(save_dir=str(root / "runs"), name=name)
    if not distilled:
        data["trainer"]["callbacks"] = [c for c in data["trainer"]["callbacks"] if "distill" not in c["class_path"]]
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump(data))
    return config
