"""A teacher-output cache that stays consistent with augmentation: one stored output per (sample, view).

A frozen teacher's logits on a given image never change, yet online distillation pays for a teacher forward on every
step (59 % of a distilled step on a 2-core CPU). Caching them naively is wrong under augmentation: outputs computed
on other crops than the student's lead to overfitting (Beyer et al., CVPR 2022). Here every training image has K
replayable views (`visiondistill.data.views`, ``num_views`` on the datamodule) and each batch carries its ``[index,
view]`` ids, so the cache keys the teacher's output by (sample, view) and a cached output is the teacher's output on
the very image the student sees (FKD, Shen & Xing, ECCV 2022, does the same with soft labels per replayable crop).

What is stored, per (sample, view), in fp16: the full logits (classification ``[C]``, segmentation ``[C, H, W]`` at
full resolution, a detector's per-location classification logits ``[A, K]``), or for classification with ``top_k``
the k largest logits, their class indices, and the log-sum-exp of the other logits (fp32), the *rest of the mass*.
A top-k entry is read back as dense logits whose other classes share that rest equally (each gets
``rest - log(C - k)``), so ``softmax`` at ``T = 1`` gives the top-k classes their exact probabilities and the
others their exact total; at another temperature the tail's split is approximate. ``k >= C`` keeps every class (exact).

Which terms read it: `LogitDistillation`, `DecoupledDistillation`, `PixelwiseDistillation`, `ChannelWiseDistillation`
on logits and `DetectionLogitDistillation` (their ``cacheable_teacher_output``; a detector's cached output is served
as a `CachedDetectorOutput` holding ``cls_logits`` only). When every
teacher consumer on the trainer is one of them, the cache serves each step: the teacher runs only on the batch's rows
not cached yet (in the cache's ``on_train_batch_start``; eval mode, so rows are independent), their logits are
stored, and the whole batch's logits go to the task as ``pl_module.cached_teacher_output``, which
`visiondistill.tasks.base.DistillationTask.teacher_forward` returns instead of running the teacher.
Feature-level terms (attention transfer, hints, saliency alignment, …) read the teacher's layers, which are not
cached: with one of them on the trainer the teacher runs every step (a warning says so), and the cache is still
filled for later runs.

Storage: in memory (``directory: null``, lives as long as the callback), or on disk under ``directory``:
``meta.json`` (the fingerprint: a sha256 of the teacher's weights, of the data set's files and labels, the number of
views K, the data seed, a sha256 of the training transform, ``top_k``) and ``shards/rank<r>-<n>.pt`` (``torch.save``
of the entries filled since the last shard). A folder filled for another fingerprint is refused with a
`TeacherCacheError` naming what changed. DDP: every rank fills the samples its sampler gives it and writes only its
own ``rank<r>-…`` shards (no two processes write one file); at each epoch end every rank writes its shard, waits for
the others and reads theirs. Fill the whole cache up front with ``visiondistill cache-teacher --config <cfg>``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from visiondistill.core.callback import DistillationCallback
from visiondistill.core.errors import ConfigError, VisionDistillError
from visiondistill.core.protocol import batch_inputs, freeze_teacher, get_teacher, module_device, output_logits
from visiondistill.core.teachers import teacher_ids

__all__ = [
    "CachedDetectorOutput",
    "TeacherCacheError",
    "TeacherOutputCache",
    "TeacherOutputStore",
    "batch_view_ids",
    "cacheable_tensor",
    "dense_logits",
    "teacher_fingerprint",
    "topk_logits",
]

#: What each fingerprint key means, for the message that refuses a changed one.
_CHANGED = {
    "teacher": "the teacher's weights",
    "data": "the data set (files, labels or sizes)",
    "num_samples": "the number of training images",
    "num_views": "num_views (K, views per image)",
    "seed": "the data seed (it seeds the views)",
    "transform": "the training transform (image size, augmentation or normalisation)",
    "top_k": "top_k",
}
_FORMAT = 1


def _short(value: Any) -> str:
    """A fingerprint value for a message: sha256 digests cut to 12 characters."""
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    return repr(value)


class TeacherCacheError(VisionDistillError, ValueError):
    """A teacher-output cache that does not fit the run (another teacher or data set, no replayable views)."""


def teacher_fingerprint(teacher: nn.Module) -> str:
    """sha256 of a network's state dict: names, dtypes, shapes and bytes of every parameter and buffer."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def batch_view_ids(batch: Any) -> Tensor | None:
    """The ``[B, 2]`` ``(index, view)`` ids of a batch: its third item, or ``batch["view_id"]``; ``None`` without."""
    ids = None
    if isinstance(batch, list | tuple) and len(batch) > 2:
        ids = batch[2]
    elif isinstance(batch, Mapping):
        ids = batch.get("view_id")
    if isinstance(ids, Tensor) and ids.dim() == 2 and ids.shape[1] == 2 and not ids.is_floating_point():
        return ids
    return None


def topk_logits(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest logits, their indices and the log-sum-exp of the others (``-inf`` when none are left).

    Args:
        logits: ``[B, C]``.
        k: Classes kept (``k >= C`` keeps all).

    Returns:
        ``(values [B, k'], indices [B, k'], rest [B])`` with ``k' = min(k, C)``.
    """
    logits = logits.float()
    k = min(int(k), logits.shape[1])
    values, indices = logits.topk(k, dim=1)
    others = logits.scatter(1, indices, float("-inf"))
    return values, indices, torch.logsumexp(others, dim=1)


def dense_logits(values: Tensor, indices: Tensor, rest: Tensor, num_classes: int) -> Tensor:
    """Dense ``[B, C]`` logits from `topk_logits`: the other classes share the rest of the mass equally.

    Example::

        >>> logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
        >>> torch.allclose(dense_logits(*topk_logits(logits, 4), 4), logits)
        True
        >>> p = dense_logits(*topk_logits(logits, 2), 4).softmax(1)
        >>> torch.allclose(p[0, [0, 1]], logits.softmax(1)[0, [0, 1]])
        True
    """
    k = values.shape[1]
    tail = num_classes - k
    fill = rest.float() - math.log(tail) if tail > 0 else torch.zeros_like(rest, dtype=torch.float32)
    dense = fill[:, None].expand(-1, num_classes).clone()
    return dense.scatter(1, indices.long(), values.float())


@dataclass(frozen=True)
class CachedDetectorOutput:
    """What the cache serves for a detector teacher: the per-location classification logits ``N×A×K`` only.

    `visiondistill.distill.detection.DetectionLogitDistillation` reads nothing else of the teacher's
    `visiondistill.models.detectors.DetectorOutput`; the FPN terms read its ``features`` and keep the live teacher.
    """

    cls_logits: Tensor


def cacheable_tensor(output: Any) -> Tensor:
    """The tensor of a teacher output that the cache stores: a detector's ``cls_logits``, else the logits.

    Classification ``[B, C]`` and segmentation ``[B, C, H, W]`` logits are stored whole; of a detector's output
    (FPN features, box regression, …) only the classification logits ``[B, A, K]``, which the detection logit KD reads.
    """
    logits = getattr(output, "cls_logits", None)
    return logits if isinstance(logits, Tensor) else output_logits(output)


class TeacherOutputStore:
    """The teacher's outputs per (sample, view): fp16 tensors ``[N, K, *shape]`` (or top-k), and which are filled.

    ``shape`` is that of one image's output: ``[C]`` (classification logits), ``[C, H, W]`` (segmentation logits,
    full resolution) or ``[A, K]`` (a detector's per-location classification logits). The tensor is allocated
    uninitialised on the first output, so memory pages are touched only as entries are filled; filled in full it
    takes ``N · K · prod(shape) · 2`` bytes.

    Args:
        num_samples: Training images (N).
        num_views: Views per image (K).
        top_k: Keep the k largest logits and the rest's log-sum-exp (classification logits only); ``None`` keeps
            all logits.
    """

    def __init__(self, num_samples: int, num_views: int, top_k: int | None = None) -> None:
        self.num_samples, self.num_views, self.top_k = int(num_samples), int(num_views), top_k
        self.filled = torch.zeros(self.num_samples, self.num_views, dtype=torch.bool)
        self.shape: tuple[int, ...] | None = None
        #: The teacher returns detector outputs: entries are served as `CachedDetectorOutput`.
        self.detector = False
        self.values: Tensor | None = None
        self.indices: Tensor | None = None
        self.rest: Tensor | None = None

    @property
    def num_classes(self) -> int | None:
        """The classes of one output (its last dimension for detectors, its first otherwise); ``None`` while empty."""
        if self.shape is None:
            return None
        return self.shape[-1] if self.detector else self.shape[0]

    def __len__(self) -> int:
        """Filled (sample, view) entries."""
        return int(self.filled.sum())

    def _allocate(self, shape: tuple[int, ...]) -> None:
        if self.top_k is not None and (len(shape) != 1 or self.detector):
            what = "a detector's per-location logits" if self.detector else "a segmentation map"
            raise TeacherCacheError(
                f"TeacherOutputCache: top_k keeps the k largest of one image's class logits [C], but the teacher's "
                f"outputs are {what} {list(shape)} per image; set top_k: null (full maps, fp16)"
            )
        self.shape = tuple(int(d) for d in shape)
        rows = (self.num_samples, self.num_views)
        width = self.shape if self.top_k is None else (min(self.top_k, self.shape[0]),)
        self.values = torch.empty(*rows, *width, dtype=torch.float16)  # read only where `filled`
        if self.top_k is not None:
            self.indices = torch.empty(*rows, *width, dtype=torch.int32)
            self.rest = torch.empty(*rows, dtype=torch.float32)

    def _check_ids(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = ids.detach().cpu().long()
        index, view = ids[:, 0], ids[:, 1]
        if (index < 0).any() or (index >= self.num_samples).any() or (view < 0).any() or (view >= self.num_views).any():
            raise TeacherCacheError(
                f"view ids {ids.tolist()} fall outside the cache's {self.num_samples} samples x {self.num_views} views"
            )
        return index, view

    def store_output(self, ids: Tensor, output: Any) -> None:
        """Stores what the cache keeps of a teacher output (`cacheable_tensor`) for the ids."""
        if self.shape is None:
            self.detector = isinstance(getattr(output, "cls_logits", None), Tensor)
        self.store(ids, cacheable_tensor(output))

    def store(self, ids: Tensor, logits: Tensor) -> None:
        """Stores the teacher's ``[B, *shape]`` logits for the ``[B, 2]`` ``(index, view)`` ids."""
        index, view = self._check_ids(ids)
        logits = logits.detach().float().cpu()
        if self.shape is None:
            self._allocate(tuple(logits.shape[1:]))
        if tuple(logits.shape[1:]) != self.shape:
            raise TeacherCacheError(
                f"teacher outputs of shape {list(logits.shape[1:])} per image, but the cache holds {list(self.shape)}"
                " (another teacher, image size or number of classes); fill a new cache"
            )
        assert self.values is not None
        if self.top_k is None:
            self.values[index, view] = logits.half()
        else:
            assert self.indices is not None and self.rest is not None
            values, indices, rest = topk_logits(logits, self.top_k)
            self.values[index, view], self.indices[index, view], self.rest[index, view] = (
                values.half(),
                indices.int(),
                rest,
            )
        self.filled[index, view] = True

    def filled_rows(self, ids: Tensor) -> Tensor:
        """Which of the ``[B, 2]`` ids are cached: a ``[B]`` bool tensor (on the CPU)."""
        index, view = self._check_ids(ids)
        return self.filled[index, view]

    def serve(self, ids: Tensor) -> Any:
        """What the terms read for the ids: the `lookup` tensor, or a `CachedDetectorOutput` of it for a detector."""
        logits = self.lookup(ids)
        return CachedDetectorOutput(logits) if self.detector and logits is not None else logits

    def lookup(self, ids: Tensor) -> Tensor | None:
        """Dense ``float32`` ``[B, *shape]`` logits for the ids when every one is filled, else ``None``."""
        index, view = self._check_ids(ids)
        if self.values is None or not bool(self.filled[index, view].all()):
            return None
        values = self.values[index, view].float()
        if self.top_k is None:
            return values
        assert self.indices is not None and self.rest is not None and self.num_classes is not None
        return dense_logits(values, self.indices[index, view], self.rest[index, view], self.num_classes)

    def entries(self, ids: Tensor) -> dict[str, Tensor]:
        """The stored tensors of ``ids`` (all filled), as a shard holds them."""
        index, view = self._check_ids(ids)
        assert self.values is not None
        shard = {"ids": ids.cpu().long(), "values": self.values[index, view].clone()}
        if self.top_k is not None:
            assert self.indices is not None and self.rest is not None
            shard["indices"], shard["rest"] = self.indices[index, view].clone(), self.rest[index, view].clone()
        shard["num_classes"] = torch.tensor(self.num_classes)
        assert self.shape is not None
        shard["shape"], shard["detector"] = torch.tensor(self.shape), torch.tensor(self.detector)
        return shard

    def load_entries(self, shard: Mapping[str, Tensor]) -> None:
        """Adds a shard's entries (`entries`)."""
        if self.shape is None:
            self.detector = bool(shard["detector"]) if "detector" in shard else False
            self._allocate(tuple(shard["shape"].tolist()) if "shape" in shard else (int(shard["num_classes"]),))
        index, view = self._check_ids(shard["ids"])
        assert self.values is not None
        self.values[index, view] = shard["values"]
        if self.top_k is not None:
            assert self.indices is not None and self.rest is not None
            self.indices[index, view], self.rest[index, view] = shard["indices"], shard["rest"]
        self.filled[index, view] = True


def _images_and_ids(samples: list[tuple[Any, ...]]) -> tuple[Tensor, Tensor]:
    """Collates what the pre-pass needs of ``(image, target, view_id)`` samples: images and ids (any target type)."""
    return torch.stack([sample[0] for sample in samples]), torch.stack([sample[-1] for sample in samples])


class TeacherOutputCache(Callback):
    """Stores the teacher's logits per (training image, augmentation view) and skips the teacher where it can.

    Needs a datamodule with replayable views (``num_views: K`` on the classification, segmentation and detection
    datamodules). See the module docstring for what is stored, which terms read it and the on-disk layout.

    Args:
        directory: Cache folder (``meta.json`` + ``shards/``), kept across runs; ``None`` keeps the cache in memory.
        top_k: Store only the k largest logits and the rest of the mass; ``None`` stores all logits.

    Raises:
        ConfigError: For ``top_k < 1``.
        TeacherCacheError: At the start of training, for a cache folder filled with another teacher, data set, K,
            transform or ``top_k`` (the message names it), or training batches without view ids.

    Example::

        >>> cache = TeacherOutputCache(directory=None, top_k=5)
        >>> cache.teacher_forwards, cache.cached_steps
        (0, 0)
    """

    def __init__(self, directory: str | None = None, top_k: int | None = None) -> None:
        super().__init__()
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"TeacherOutputCache: top_k must be a whole number >= 1 or null, got {top_k!r}")
        self.directory = Path(directory) if directory is not None else None
        self.top_k = top_k
        self.store: TeacherOutputStore | None = None
        self.fingerprint: dict[str, Any] | None = None
        self.skip_teacher = True
        #: Training steps in which the teacher ran (on some rows) / not at all, and the images it ran on.
        self.teacher_forwards = 0
        self.cached_steps = 0
        self.teacher_images = 0
        self._rank = 0
        self._loaded: set[str] = set()
        self._unsaved: list[Tensor] = []
        self._pending: Tensor | None = None
        self._captured: Tensor | None = None
        self._hook: Any = None

    # -- opening --------------------------------------------------------------------------------------------------

    def open(self, teacher: nn.Module, dataset: Any, rank: int = 0) -> TeacherOutputStore:
        """Checks (or records) the fingerprint of ``teacher`` + ``dataset`` and loads what is cached for it.

        Args:
            teacher: The frozen teacher.
            dataset: The training data set with replayable views (``view_fingerprint()``, ``num_views``, ``len``).
            rank: This process's global rank (names its shards).

        Raises:
            TeacherCacheError: When the data set has no replayable views, or the cache holds another fingerprint.
        """
        if not callable(getattr(dataset, "view_fingerprint", None)):
            raise TeacherCacheError(
                f"TeacherOutputCache needs replayable augmentation views, but the training data set is a "
                f"{type(dataset).__name__}; set num_views on the datamodule (e.g. data.init_args.num_views: 8)"
            )
        fingerprint = {"format": _FORMAT, "teacher": teacher_fingerprint(teacher), **dataset.view_fingerprint()}
        fingerprint["top_k"] = self.top_k
        self._rank = int(rank)
        if self.directory is not None:
            self._check(self._read_meta(), fingerprint, str(self.directory))
            self._write_meta(fingerprint)
        elif self.fingerprint is not None and self.fingerprint != fingerprint:
            self._check(self.fingerprint, fingerprint, "in memory")
        if self.store is None or self.fingerprint != fingerprint:
            self.store, self._loaded = TeacherOutputStore(len(dataset), dataset.num_views, self.top_k), set()
        self.fingerprint = fingerprint
        self.reload()
        return self.store

    def _read_meta(self) -> dict[str, Any] | None:
        assert self.directory is not None
        path = self.directory / "meta.json"
        if not path.is_file():
            # another rank may be writing this very cache (its shards/ folder, its temporary meta file): not foreign
            ours = ("shards", ".meta.json.")
            if self.directory.is_dir() and any(not p.name.startswith(ours) for p in self.directory.iterdir()):
                raise TeacherCacheError(
                    f"'{self.directory}' is not empty and holds no meta.json, so it is not a teacher cache; "
                    "point TeacherOutputCache.directory to a new or empty folder"
                )
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise TeacherCacheError(
                f"cannot read the teacher cache's '{path}' ({error}); delete '{self.directory}' to fill a new cache"
            ) from error

    def _check(self, old: dict[str, Any] | None, new: dict[str, Any], where: str) -> None:
        if old is None:
            return
        changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
        if changed:
            what = "; ".join(
                f"{_CHANGED.get(key, key)} ({key}: {_short(old.get(key))} -> {_short(new.get(key))})" for key in changed
            )
            fix = (
                f"delete '{self.directory}' or point TeacherOutputCache.directory to a new folder"
                if self.directory is not None
                else "use a new TeacherOutputCache"
            )
            raise TeacherCacheError(
                f"the teacher cache {where} was filled for another setting: {what}; its outputs do not belong to "
                f"this run. {fix}, and the cache is filled again"
            )

    def _write_meta(self, fingerprint: dict[str, Any]) -> None:
        assert self.directory is not None
        (self.directory / "shards").mkdir(parents=True, exist_ok=True)
        path = self.directory / "meta.json"
        if not path.is_file():
            # rank-suffixed temporary name: ranks racing here write the same content, each to a file of its own
            temporary = path.with_name(f".meta.json.{self._rank}")
            temporary.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
            os.replace(temporary, path)

    def reload(self) -> int:
        """Reads the shards not read yet (other ranks', earlier runs'); returns how many it read."""
        if self.directory is None or self.store is None:
            return 0
        shards = sorted((self.directory / "shards").glob("rank*.pt"))
        new = [path for path in shards if path.name not in self._loaded]
        for path in new:
            self.store.load_entries(torch.load(path, map_location="cpu", weights_only=True))
            self._loaded.add(path.name)
        return len(new)

    def flush(self) -> Path | None:
        """Writes the entries filled since the last flush to a new shard of this rank; returns its path."""
        if self.directory is None or self.store is None or not self._unsaved:
            self._unsaved = []
            return None
        ids = torch.unique(torch.cat(self._unsaved), dim=0)
        self._unsaved = []
        folder = self.directory / "shards"
        number = len(list(folder.glob(f"rank{self._rank}-*.pt")))
        path = folder / f"rank{self._rank}-{number:05d}.pt"
        temporary = folder / f".{path.name}.tmp"
        torch.save(self.store.entries(ids), temporary)
        os.replace(temporary, path)  # readers never see half a shard
        self._loaded.add(path.name)
        return path

    # -- the pre-pass ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def fill(self, teacher: nn.Module, dataset: Any, batch_size: int = 64, num_workers: int = 0) -> int:
        """Runs the teacher on every (sample, view) not cached yet and stores its outputs (the ``cache-teacher`` pass).

        Returns:
            The number of views computed.
        """
        store = self.open(teacher, dataset)
        teacher.eval()
        missing = [tuple(pair) for pair in (~store.filled).nonzero().tolist()]
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=missing, num_workers=num_workers, collate_fn=_images_and_ids
        )
        device = module_device(teacher)
        for images, ids in loader:
            store.store_output(ids, teacher(images.to(device)))
            self._unsaved.append(ids)
        self.flush()
        return len(missing)

    # -- training -------------------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        get_teacher(pl_module, required=True, who="TeacherOutputCache")
        several = teacher_ids(pl_module)
        if len(several) > 1:
            # One store holds one teacher's outputs; with several, the ensemble and per-teacher terms need them all.
            raise ConfigError(
                f"TeacherOutputCache caches one teacher, but the model has {len(several)} teachers {several} "
                "(model.init_args.teachers); remove the TeacherOutputCache callback, or distil from one teacher"
            )
        live = [
            callback.name
            for callback in trainer.callbacks
            if isinstance(callback, DistillationCallback)
            and callback.needs_teacher
            and not getattr(callback, "cacheable_teacher_output", False)
        ]
        self.skip_teacher = not live
        if live:
            rank_zero_warn(
                f"TeacherOutputCache: the teacher still runs on every step, because {live} read the teacher's layers "
                "or run it themselves, which the cache does not store; only the logit terms (LogitDistillation, "
                "DecoupledDistillation, PixelwiseDistillation, ChannelWiseDistillation on logits, "
                "DetectionLogitDistillation) are served from it. The cache is filled all the same."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        teacher = get_teacher(pl_module, required=True, who="TeacherOutputCache")
        assert teacher is not None
        loader = trainer.train_dataloader
        self.open(teacher, getattr(loader, "dataset", None), rank=trainer.global_rank)
        self._remove_hook()
        self._hook = teacher.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._pending is not None and self._captured is None:  # the step's own teacher forward, not a later one
            self._captured = output

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        ids = batch_view_ids(batch)
        if ids is None:
            raise TeacherCacheError(
                "TeacherOutputCache: a training batch carries no (index, view) ids; the datamodule needs num_views "
                "(replayable views) and its batches must be (images, labels, view_ids)"
            )
        assert self.store is not None, "on_train_start has not run"
        self._pending = self._captured = None
        if not self.skip_teacher:  # a feature term needs the live teacher: it runs in the step, the hook stores it
            self._pending = ids
            self.teacher_forwards += 1
            self.teacher_images += ids.shape[0]
            return
        missing = (~self.store.filled_rows(ids)).nonzero()[:, 0]
        if len(missing):  # the teacher runs on the uncached rows only (eval mode: rows are independent)
            teacher = get_teacher(pl_module, required=True, who="TeacherOutputCache")
            assert teacher is not None
            freeze_teacher(teacher)
            inputs = batch_inputs(batch)
            with torch.no_grad():
                live = teacher(inputs[missing.to(inputs.device)])
            self.store.store_output(ids[missing], live)
            self._unsaved.append(ids[missing].cpu())
            self.teacher_forwards += 1
            self.teacher_images += len(missing)
        else:
            self.cached_steps += 1
        cached = self.store.serve(ids)
        assert cached is not None
        device = module_device(pl_module)
        pl_module.cached_teacher_output = (
            CachedDetectorOutput(cached.cls_logits.to(device))
            if isinstance(cached, CachedDetectorOutput)
            else cached.to(device)
        )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pl_module.cached_teacher_output = None
        if self._pending is not None and self._captured is not None and self.store is not None:
            self.store.store_output(self._pending, self._captured)
            self._unsaved.append(self._pending.cpu())
        self._pending = self._captured = None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush()
        if self.directory is not None and trainer.world_size > 1:
            trainer.strategy.barrier("teacher_cache_shards")
            self.reload()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.flush()
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
