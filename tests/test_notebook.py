"""`notebooks/inspect_saliency.ipynb`: committed clean, and runs end to end on a tiny real run folder."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from visiondistill.explain import FeatureMapCallback, GradCAMCallback
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "inspect_saliency.ipynb"
CLASS_NAMES = ["top-left", "top-right", "bottom-left", "bottom-right"]
SIZE, PROBES = 64, 4  # 64 px: the last stage keeps a 2×2 map, so the CAMs are not flat


def quadrant_images(n: int = 16) -> torch.utils.data.TensorDataset:
    """Images with one bright square; the label is the quadrant it sits in."""
    generator = torch.Generator().manual_seed(0)
    images = 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, len(CLASS_NAMES), (n,), generator=generator)
    half, side = SIZE // 2, SIZE // 4
    for i, label in enumerate(labels.tolist()):
        top, left = (label // 2) * half + side // 2, (label % 2) * half + side // 2
        images[i, :, top : top + side, left : left + side] += 1.0
    return torch.utils.data.TensorDataset(images, labels)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real two-epoch run with both explanation callbacks, logged to ``<tmp>/run``."""
    root = tmp_path_factory.mktemp("notebook_run")
    torch.manual_seed(0)
    task = ClassificationTask(
        student=ClassifierSpec(name="test_resnet"),
        teacher=ClassifierSpec(name="test_efficientnet"),
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
    )
    trainer = pl.Trainer(
        default_root_dir=root,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(save_dir=root, name="run", version=""),
        callbacks=[GradCAMCallback(num_samples=PROBES), FeatureMapCallback(num_samples=PROBES)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    dataset = quadrant_images()
    trainer.fit(task, DataLoader(dataset, batch_size=8, shuffle=True), DataLoader(dataset, batch_size=8))
    return Path(trainer.log_dir)


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory) -> dict[str, str]:
    """A ``python3`` kernelspec that runs this very interpreter (the venv's), found first through JUPYTER_PATH."""
    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (visiondistill tests)",
        "language": "python",
        "env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return {"JUPYTER_PATH": str(jupyter_path), "MPLBACKEND": "Agg"}


def execute(run_dir: Path | str, kernel_env: dict[str, str], monkeypatch) -> nbformat.NotebookNode:
    for key, value in {**kernel_env, "VISIONDISTILL_RUN_DIR": str(run_dir)}.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    return notebook


def outputs(cell: nbformat.NotebookNode, mime: str) -> str:
    texts = [output.get("text", "") for output in cell.outputs if output.output_type == "stream"]
    texts += [output.get("data", {}).get(mime, "") for output in cell.outputs if "data" in output]
    return "\n".join(texts)


def test_committed_notebook_is_clean():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", [])
    assert "VISIONDISTILL_RUN_DIR" in code[0].source and "EPOCH = None" in code[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_notebook_runs_on_a_real_run(run_dir, kernel_env, monkeypatch):
    saliency = np.load(run_dir / "saliency" / "epoch_001" / "maps.npz")
    notebook = execute(run_dir, kernel_env, monkeypatch)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    text = "\n".join(outputs(cell, "text/markdown") + outputs(cell, "text/plain") for cell in code)
    assert "inspecting epoch  : 1" in text
    # The metrics table and the plot read every agreement scalar.
    for tag in ("val/acc_top1", "val/saliency/pearson", "val/saliency/kld", "val/attention/cka/-1"):
        assert f"`{tag}`" in text, tag
    # The disagreement table lists every probe image (TOP_N = 8 > 4), lowest Pearson first.
    table = next(
        outputs(cell, "text/markdown") for cell in code if "lowest per-image Pearson" in outputs(cell, "text/markdown")
    )
    order = np.lexsort((-saliency["kld"], saliency["pearson"]))
    positions = [table.index(f"| #{int(saliency['indices'][i])} |") for i in order]
    assert positions == sorted(positions)
    assert any(name in table for name in CLASS_NAMES)
    assert "stage -1: at_distance = " in text
    # Figures: the metrics plot, the full grid, the disagreement grid, one attention grid.
    images = sum("image/png" in output.get("data", {}) for cell in code for output in cell.outputs)
    assert images >= 4


@pytest.mark.parametrize("case", ["missing_run_dir", "no_saliency_folder"])
def test_missing_inputs_give_a_clear_error(case, tmp_path, kernel_env, monkeypatch):
    run_dir = tmp_path / "nowhere" if case == "missing_run_dir" else tmp_path
    with pytest.raises(CellExecutionError) as error:
        execute(run_dir, kernel_env, monkeypatch)
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(error.value))  # the traceback comes with ANSI colours
    assert "FileNotFoundError" in message
    assert str(run_dir) in message or str(run_dir.resolve()) in message
    assert "make demo" in message and "configs/classification/shapes_kd.yaml" in message
