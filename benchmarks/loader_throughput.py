"""Images per second each task's training dataloader delivers, with 0, 2 and ``auto`` workers, in one run.

For every task datamodule on the synthetic shapes (classification, segmentation, detection, keypoints) and the
synthetic lesions, the data are generated once into a temporary folder (``--images`` training images at
``--image-size`` px), then for each worker setting the training loader is built the way a ``fit`` builds it
(`visiondistill.data.loading.loader_kwargs`: persistent workers, prefetching, pinned memory on CUDA), iterated once
to start its workers and fill the page cache, and timed over ``--epochs`` further epochs. Nothing but the loader
runs, so the figures are the most the input pipeline can feed a GPU.

    python benchmarks/loader_throughput.py [--image-size 64] [--images 512] [--batch-size 64] [--epochs 2]
        [--workers 0 2 auto] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from visiondistill.data import ShapesClassification, ShapesDetection, ShapesKeypoints, ShapesSegmentation
from visiondistill.data.loading import available_cpus, check_num_workers, resolve_num_workers
from visiondistill.data.medical import SyntheticLesions

warnings.filterwarnings("ignore")


def datamodules(root: Path, size: int, images: int, batch_size: int) -> dict[str, object]:
    """One datamodule per task, with ``images`` training images (a few validation images: the splits need them)."""
    counts = {"num_train": images, "num_val": 8, "num_test": 0}
    common = {"batch_size": batch_size, **counts}
    return {
        # one folder each: the tasks' default generator settings differ
        "classification (ShapesClassification)": ShapesClassification(
            str(root / "classification"), image_size=size, **common
        ),
        "segmentation (ShapesSegmentation)": ShapesSegmentation(str(root / "segmentation"), image_size=size, **common),
        "detection (ShapesDetection)": ShapesDetection(str(root / "detection"), image_size=size, **common),
        "keypoints (ShapesKeypoints)": ShapesKeypoints(
            str(root / "keypoints"), input_size=size, image_size=size, **common
        ),
        "medical (SyntheticLesions)": SyntheticLesions(str(root / "lesions"), image_size=size, **common),
    }


def images_per_second(module, workers, epochs: int) -> float:
    """Training images per second of the module's train loader with ``workers``, after one warm-up epoch."""
    module.num_workers = workers
    loader = module.train_dataloader()
    for _ in loader:  # starts the (persistent) workers and warms the page cache
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            images = batch[0] if isinstance(batch, list | tuple) else batch["image"]
            count += images.shape[0]
    elapsed = time.perf_counter() - start
    del loader  # stops the persistent workers before the next setting starts its own
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512, help="training images generated per task")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--workers", nargs="+", default=["0", "2", "auto"], help="worker settings to compare")
    parser.add_argument("--data-dir", type=Path, default=None, help="where to generate (default: a temporary folder)")
    args = parser.parse_args()
    settings = [check_num_workers(w, owner="--workers") for w in args.workers]

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp)
        modules = datamodules(root, args.image_size, args.images, args.batch_size)
        rows = []
        for name, module in modules.items():
            module.prepare_data()
            module.setup("fit")
            rows.append((name, [images_per_second(module, w, args.epochs) for w in settings]))

    labels = [f"{w} ({resolve_num_workers(w)})" if w == "auto" else str(w) for w in settings]
    print(
        f"{available_cpus()} CPU cores available; {args.images} training images of {args.image_size} px per task, "
        f"batch {args.batch_size}, {args.epochs} timed epochs after one warm-up epoch; images/s by num_workers"
    )
    width = max(len(name) for name, _ in rows)
    print(f"{'datamodule':<{width}} | " + " | ".join(f"{label:>10}" for label in labels))
    print("-" * width + "-|-" + "-|-".join("-" * 10 for _ in labels))
    for name, values in rows:
        print(f"{name:<{width}} | " + " | ".join(f"{value:>10.0f}" for value in values))


if __name__ == "__main__":
    main()
