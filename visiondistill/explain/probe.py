"""The fixed probe batch of the explanation callbacks, and the guards that keep probing out of training.

Both `GradCAMCallback` and `FeatureMapCallback` look at the same few validation images every time they run, so
their pictures and numbers are comparable across epochs. This module draws that batch (once, with a seeded
generator of its own) and holds `ProbeCallback`, their shared base: it decides when to run, steps out of
Lightning's inference mode, and wraps every probe in `untouched_training_state`, which saves and restores every
module's train flag, every parameter's gradient and the global random number generators.
"""

from __future__ import annotations

import random
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.dataloader import default_collate
from typing_extensions import override

from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import batch_inputs, module_device
from visiondistill.core.recorder import LayerSpec
from visiondistill.explain.render import encode_png, save_png


@dataclass
class ProbeBatch:
    """A few validation samples, collated, on the CPU, as ordinary (non-inference) tensors.

    Attributes:
        batch: The collated batch, with the structure the validation dataloader gives (tuple, dict …).
        images: The input images of the batch, ``N×C×H×W``.
        indices: The dataset indices of the samples (``-1`` for samples of an iterable dataset).
        mean: Per-channel normalisation mean of the images, when the datamodule declares it.
        std: Per-channel normalisation standard deviation, when the datamodule declares it.
    """

    batch: Any
    images: Tensor
    indices: Tensor
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def display_images(self) -> Tensor:
        """The images in [0, 1] for display: de-normalised with ``mean``/``std`` when known, else min-max per image."""
        images = self.images.detach().to(torch.float32)
        channels = images.shape[1]
        if self.mean is not None and self.std is not None and len(self.mean) == len(self.std) == channels:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            return (images * std + mean).clamp(0.0, 1.0)
        flat = images.flatten(1)
        low = flat.min(dim=1).values.view(-1, 1, 1, 1)
        high = flat.max(dim=1).values.view(-1, 1, 1, 1)
        return (images - low) / (high - low).clamp_min(1e-12)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restores Python's, NumPy's and torch's global random states (CPU and initialised CUDA devices) on exit.

    Whatever runs inside (a dataset's ``__getitem__``, a dataloader iterator drawing its base seed, a CAM method
    that samples) then leaves the random stream of training exactly where it was.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    # Only the current device: touching every GPU's generator would open a CUDA context on each from every rank.
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextmanager
def untouched_training_state(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Leaves the train/eval flag of every submodule and the ``.grad`` of every parameter as it found them.

    On entry every gradient is stashed and set to ``None``, so nothing run inside can read, zero or accumulate into
    it; on exit the stashed tensors themselves (or ``None``) are put back and every module gets its own flag back.
    The global random states are preserved too (`preserved_rng`).

    Args:
        modules: The modules to guard (their submodules and parameters are included; overlaps are fine).
    """
    flags: dict[nn.Module, bool] = {}
    grads: dict[nn.Parameter, Tensor | None] = {}
    for module in modules:
        for submodule in module.modules():
            flags.setdefault(submodule, submodule.training)
        for parameter in module.parameters():
            grads.setdefault(parameter, parameter.grad)
    for parameter in grads:
        parameter.grad = None
    try:
        with preserved_rng():
            yield
    finally:
        for parameter, grad in grads.items():
            parameter.grad = grad
        for submodule, flag in flags.items():
            submodule.training = flag


def draw_probe_batch(trainer: pl.Trainer, num_samples: int, seed: int) -> ProbeBatch:
    """Draws the fixed probe batch from the validation dataloader's dataset.

    The indices are ``torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_samples]``,
    so the same data and seed give the same images in every run; the samples are collated with the loader's own
    ``collate_fn``. An iterable dataset gives its first ``num_samples`` samples instead. Global random states are
    left untouched (`preserved_rng`).

    Args:
        trainer: The trainer; its validation dataloader (or its datamodule's) is used.
        num_samples: Number of samples (fewer when the dataset is smaller).
        seed: Seed of the index generator.

    Returns:
        The probe batch.

    Raises:
        RuntimeError: When no validation dataloader is found or its dataset is empty.
    """
    loader = _validation_loader(trainer)
    dataset = loader.dataset
    collate = loader.collate_fn or default_collate
    with preserved_rng():
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            batch, count = _first_samples(loader, num_samples)
            indices = torch.full((count,), -1, dtype=torch.long)
        else:
            if len(dataset) == 0:
                raise RuntimeError("the validation dataset is empty; the explanation callbacks need a few images")
            generator = torch.Generator().manual_seed(seed)
            indices = torch.randperm(len(dataset), generator=generator)[:num_samples]
            batch = collate([dataset[int(i)] for i in indices])
    # Clone outside inference mode: tensors made inside Lightning's evaluation loop cannot enter autograd.
    with torch.inference_mode(False):
        batch = apply_to_collection(batch, Tensor, lambda t: t.detach().cpu().clone())
    datamodule = getattr(trainer, "datamodule", None)
    mean, std = _normalisation(getattr(datamodule, "mean", None)), _normalisation(getattr(datamodule, "std", None))
    return ProbeBatch(batch=batch, images=batch_inputs(batch), indices=indices, mean=mean, std=std)


def _validation_loader(trainer: pl.Trainer) -> DataLoader:
    loaders = trainer.val_dataloaders
    if loaders is None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "val_dataloader"):
            loaders = datamodule.val_dataloader()
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, Sequence):
        loaders = next((loader for loader in loaders if isinstance(loader, DataLoader)), None)
    if not isinstance(loaders, DataLoader):
        raise RuntimeError(
            "the explanation callbacks draw their probe images from the validation dataloader, but none was found "
            f"(got {type(loaders).__name__}); give the trainer a val_dataloader"
        )
    return loaders


def _first_samples(loader: DataLoader, num_samples: int) -> tuple[Any, int]:
    batches, count = [], 0
    for batch in loader:
        batches.append(batch)
        count += batch_inputs(batch).shape[0]
        if count >= num_samples:
            break
    if not batches:
        raise RuntimeError("the validation dataloader yielded no batch; the explanation callbacks need a few images")
    # Join and cut along the batch dimension, whatever the batch structure.
    joined = batches[0] if len(batches) == 1 else _concatenate(batches)
    count = min(count, num_samples)
    return apply_to_collection(joined, Tensor, lambda t: t[:count]), count


def _concatenate(batches: list[Any]) -> Any:
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.cat(batches)
    if isinstance(first, dict):
        return {key: _concatenate([b[key] for b in batches]) for key in first}
    if isinstance(first, list | tuple):
        return type(first)(_concatenate(list(items)) for items in zip(*batches, strict=True))
    return first


def _normalisation(values: object) -> tuple[float, ...] | None:
    if isinstance(values, Tensor):
        values = values.flatten().tolist()
    if isinstance(values, Sequence) and not isinstance(values, str) and values:
        try:
            return tuple(float(v) for v in values)
        except (TypeError, ValueError):
            return None
    return None


def model_input(images: Tensor, model: nn.Module) -> Tensor:
    """The probe images on the model's device, in the dtype of its floating-point weights (``16-true`` runs …)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), images.dtype)
    return images.to(device=module_device(model), dtype=dtype if images.is_floating_point() else images.dtype)


def layer_list(layers: LayerSpec | Sequence[LayerSpec], owner: str, name: str) -> list[LayerSpec]:
    """Normalises a layer argument (one spec or several) to a non-empty list of module paths / stage indices.

    Raises:
        ValueError: When it is empty or holds something other than strings and integers.
    """
    items = [layers] if isinstance(layers, str | int) else list(layers)
    if not items:
        raise ConfigError(f"{owner}: {name} must name at least one layer")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ConfigError(f"{owner}: {name} must be module paths or stage indices, got {item!r}")
    return items


def _guarded_modules(pl_module: pl.LightningModule) -> list[nn.Module]:
    # Student and teacher are usually submodules, but a module may keep its teacher out of the registry.
    extra = [getattr(pl_module, name, None) for name in ("student", "teacher")]
    return [pl_module] + [module for module in extra if isinstance(module, nn.Module)]


class ProbeCallback(Callback):
    """Base of the explanation callbacks: runs `probe` on the fixed probe batch at the end of validation.

    It runs every ``every_n_epochs`` epochs of ``fit`` (the epochs ``e`` with ``(e + 1) % every_n_epochs == 0``,
    as `ModelCheckpoint` counts) and at every ``validate``, never during the sanity check. Only global rank zero
    probes, logs (``rank_zero_only=True``) and writes files; the run folder is read on every rank first, because
    `pl.Trainer.log_dir` is a collective call. Inside, gradients are enabled outside inference mode (so it also
    works under ``trainer.validate``), and `untouched_training_state` guards the whole LightningModule. The probe
    batch is checkpointed (its ``state_key`` is built from the settings), so a resumed ``fit`` keeps probing the same
    images.

    Args:
        every_n_epochs: Probe every this many training epochs (>= 1).
        num_samples: Number of probe images (>= 1).
        seed: Seed of the probe-image draw.
        log_images: Log image grids to TensorBoard (when a `TensorBoardLogger` is attached) and write PNGs.
        save_dir: Folder for the ``epoch_XXX/`` outputs instead of ``<log_dir>/<folder>``.

    Raises:
        ValueError: On a non-positive ``every_n_epochs`` or ``num_samples``.
    """

    #: Sub-folder of the run folder the callback writes to (``<log_dir>/<folder>/epoch_XXX``).
    folder: str = "probe"

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 16,
        seed: int = 0,
        log_images: bool = True,
        save_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ConfigError(f"{name}: every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"{name}: num_samples must be an integer >= 1, got {num_samples!r}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = int(seed)
        self.log_images = bool(log_images)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self._probe: ProbeBatch | None = None
        self._restored: ProbeBatch | None = None  # the probe batch of the checkpoint a fit resumes from

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: ProbeBatch, out_dir: Path) -> None:
        """Explains the probe batch, logs metrics and writes files under ``out_dir``; subclasses implement it."""
        raise NotImplementedError

    @property
    def probe_batch(self) -> ProbeBatch | None:
        """The probe batch, once drawn (at the first run of each stage; a resumed fit takes its checkpoint's)."""
        return self._probe

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._probe = None  # another stage may validate on other data; the draw is seeded, so this costs nothing
        self._restored = None  # a checkpoint's probe batch is restored after setup (`load_state_dict`)

    def should_probe(self, trainer: pl.Trainer) -> bool:
        """Whether to run at the end of this validation epoch."""
        if trainer.sanity_checking:
            return False
        if trainer.state.fn == "validate":
            return True
        return trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.should_probe(trainer):
            return
        log_dir = trainer.log_dir or trainer.default_root_dir  # a broadcast: every rank must ask
        if not trainer.is_global_zero:
            return
        root = self.save_dir if self.save_dir is not None else Path(log_dir) / self.folder
        out_dir = root / f"epoch_{trainer.current_epoch:03d}"
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(untouched_training_state(_guarded_modules(pl_module)))
            if self._probe is None and self._restored is not None and trainer.state.fn == "fit":
                self._probe = self._restored  # a resumed fit probes the images of its earlier epochs
            if self._probe is None:
                self._probe = draw_probe_batch(trainer, self.num_samples, self.seed)
            self.probe(trainer, pl_module, self._probe, out_dir)

    @property
    @override
    def state_key(self) -> str:
        # Built from the configuration: two probe callbacks of one class with other settings keep their own batch.
        identity = {
            key: value
            for key, value in vars(self).items()
            if not key.startswith("_") and isinstance(value, str | int | float | bool | list)
        }
        return self._generate_state_key(**identity)

    @override
    def state_dict(self) -> dict[str, Any]:
        # The batch itself, not only its seed: a resumed fit then probes exactly the images of its earlier epochs,
        # even when the validation data has changed since.
        probe = self._probe if self._probe is not None else self._restored
        if probe is None:
            return {}
        return {"probe": {"batch": probe.batch, "indices": probe.indices, "mean": probe.mean, "std": probe.std}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("probe")
        if saved is None:  # checkpoints written before the batch was saved: the seeded draw gives the same images
            return
        batch = saved["batch"]
        self._restored = ProbeBatch(
            batch=batch, images=batch_inputs(batch), indices=saved["indices"], mean=saved["mean"], std=saved["std"]
        )

    def log_metric(self, pl_module: pl.LightningModule, name: str, value: Tensor | float) -> None:
        """Logs one epoch-level scalar from rank zero (no collective call)."""
        # A Python float: Lightning puts it on the module's device, wherever the maps were scored.
        value = float(value.detach().cpu()) if isinstance(value, Tensor) else float(value)
        pl_module.log(name, value, on_step=False, on_epoch=True, rank_zero_only=True, batch_size=1)

    def log_image(self, trainer: pl.Trainer, tag: str, image: np.ndarray, png: bytes | None = None) -> None:
        """Adds an ``H×W×3`` uint8 image to every attached `TensorBoardLogger` (other loggers are skipped).

        Args:
            trainer: The trainer.
            tag: The image's TensorBoard tag.
            image: The image.
            png: The image already encoded (`encode_png`), so that it is not encoded again.
        """
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            if png is None or not _add_encoded_image(logger.experiment, tag, png, image.shape, trainer.global_step):
                logger.experiment.add_image(tag, image, global_step=trainer.global_step, dataformats="HWC")

    def save_image(self, trainer: pl.Trainer, tag: str, image: np.ndarray, path: Path) -> None:
        """Writes an ``H×W×3`` uint8 image to ``path`` as PNG and logs it as `log_image` does, encoding it once."""
        png = encode_png(image)
        save_png(png, path)
        self.log_image(trainer, tag, image, png=png)


def _add_encoded_image(experiment: object, tag: str, png: bytes, shape: tuple[int, ...], step: int) -> bool:
    """Adds PNG bytes as an image summary to torch's `SummaryWriter`; ``False`` for any other writer.

    This is what ``SummaryWriter.add_image`` does once it has encoded the image itself, which costs ~0.1 s for a
    saliency grid (a float copy of the image and a PNG at zlib level 6) on top of the PNG written to disk.
    """
    try:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    file_writer = getattr(experiment, "_get_file_writer", None)
    if not isinstance(experiment, SummaryWriter) or file_writer is None or len(shape) != 3:
        return False
    height, width, channels = shape
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
    file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    return True


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`numpy.savez_compressed` at zlib level 1 (numpy's is level 6): ~3× faster for ~8 % more bytes.

    The file is an ordinary compressed ``.npz``; `numpy.load` reads it as it reads one from ``savez_compressed``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as file:
                np.lib.format.write_array(file, np.asanyarray(value), allow_pickle=False)
