"""Command-line overrides that shrink any shipped config to a seconds-long `visiondistill` run in a test folder."""

from __future__ import annotations

from pathlib import Path


def tiny_overrides(
    tmp_path: Path,
    name: str,
    *,
    num_train: int = 8,
    num_val: int = 4,
    num_test: int = 0,
    batch_size: int = 4,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """One epoch of two training batches on 32-px synthetic data, logged to ``tmp_path/runs/<name>``.

    Args:
        tmp_path: The test's folder (data under ``data/``, runs under ``runs/``).
        name: The run's folder name.
        num_train: Training images generated.
        num_val: Validation images generated.
        num_test: Test images generated.
        batch_size: Batch size.
        extra: Further overrides, appended.
    """
    return [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.logger.init_args.name={name}",
        f"--data.init_args.data_dir={tmp_path / 'data'}",
        "--data.init_args.image_size=32",
        f"--data.init_args.num_train={num_train}",
        f"--data.init_args.num_val={num_val}",
        f"--data.init_args.num_test={num_test}",
        f"--data.init_args.batch_size={batch_size}",
        "--data.init_args.num_workers=0",
        *extra,
    ]
