"""``visiondistill cache-teacher --config <cfg>``: fill a run's teacher-output cache before training.

The config is the training config (``visiondistill fit --config <cfg>``): its model gives the teacher, its data the
training images and their replayable views (``num_views``), and its ``TeacherOutputCache`` callback the folder. Every
(image, view) not cached yet goes through the teacher once; the following ``fit`` then runs no teacher forward for the
logit terms (see `visiondistill.distill.cache`).

Example::

    visiondistill cache-teacher --config configs/classification/shapes_kd_cached.yaml
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from visiondistill.cli.lightning import VisionDistillCLI
from visiondistill.core.errors import ConfigError
from visiondistill.distill.cache import TeacherOutputCache


def main(argv: Sequence[str]) -> int:
    """Runs the pre-pass; returns the exit status (errors are raised for `visiondistill.cli.errors.run_guarded`).

    Raises:
        ConfigError: When the config has no ``TeacherOutputCache`` with a ``directory``, or no teacher.
        TeacherCacheError: When the folder holds a cache of another teacher or data set, or the data has no views.
    """
    parser = argparse.ArgumentParser(
        prog="visiondistill cache-teacher", description="fill a training config's teacher-output cache up front"
    )
    parser.add_argument("--config", required=True, help="the training config (as for `visiondistill fit`)")
    parser.add_argument("--batch-size", type=int, default=None, help="teacher batch size (default: the data's)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the pass")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the teacher runs"
    )
    args, overrides = parser.parse_known_args(list(argv))
    cli = VisionDistillCLI(args=["--config", args.config, *overrides], run=False)
    caches = [callback for callback in cli.trainer.callbacks if isinstance(callback, TeacherOutputCache)]
    if not caches or caches[0].directory is None:
        what = "has no TeacherOutputCache callback" if not caches else "keeps its TeacherOutputCache in memory"
        raise ConfigError(
            f"{args.config} {what}; a pre-pass needs a cache folder a later run reads: add "
            "`- class_path: visiondistill.distill.TeacherOutputCache` with `init_args: {directory: <folder>}` to "
            "trainer.callbacks"
        )
    teacher = getattr(cli.model, "teacher", None)
    if teacher is None:
        raise ConfigError(
            f"{args.config}: the model has no teacher (model.init_args.teacher), so there is nothing to cache"
        )
    several = getattr(cli.model, "teachers", None)
    if several is not None and len(several) > 1:
        raise ConfigError(
            f"{args.config}: the model has {len(several)} teachers {list(several.keys())} (model.init_args.teachers); "
            "the cache holds one teacher's outputs, so remove TeacherOutputCache or distil from one teacher"
        )
    datamodule = cli.datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    started = time.perf_counter()
    computed = caches[0].fill(
        teacher.to(args.device),
        dataset,
        batch_size=args.batch_size or datamodule.batch_size,
        num_workers=args.num_workers,
    )
    views = f"{len(dataset)} images x {dataset.num_views} views"
    print(
        f"cache-teacher: {computed} teacher outputs computed in {time.perf_counter() - started:.1f} s "
        f"({len(caches[0].store)} of {views} cached) in {caches[0].directory}"
    )
    return 0
