"""SaliencyAlignment and adaptive weights under DDP: two CPU processes (gloo), no deadlock, one result on both ranks.

Each rank writes its result to its own file (``rank<N>.json`` under the run's folder): both ranks printing to one
stdout let their lines interleave on a loaded machine (``…params 742.438333rank 1: weights […]``), so a parser of that
stdout found one rank only now and then although both ranks agreed.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from ..support.ddp import run_ddp_script

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    from pathlib import Path
    warnings.filterwarnings("ignore")
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from visiondistill.distill import AdaptiveDistillationWeights, LogitDistillation, SaliencyAlignment, WeightSchedule
    from visiondistill.explain import GradCAMCallback
    from visiondistill.models import ClassifierSpec
    from visiondistill.tasks import ClassificationTask


    class Report(pl.Callback):
        def __init__(self, root):
            self.root = Path(root)

        def on_fit_end(self, trainer, pl_module):
            from visiondistill.distill import distillation_callbacks

            weights = [round(c.weight, 6) for c in distillation_callbacks(trainer)]
            checksum = sum(float(p.double().sum()) for p in pl_module.student.parameters())
            rule = next(c for c in trainer.callbacks if isinstance(c, AdaptiveDistillationWeights))
            result = {"weights": weights, "updates": rule.updates, "params": round(checksum, 6)}
            (self.root / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


    if __name__ == "__main__":
        root = sys.argv[1]
        pl.seed_everything(0)
        data = TensorDataset(torch.randn(32, 3, 32, 32), torch.arange(32) % 4)
        loader = DataLoader(data, batch_size=4)
        task = ClassificationTask(
            student=ClassifierSpec(name="test_resnet"), teacher=ClassifierSpec(name="test_efficientnet"), num_classes=4
        )
        callbacks = [
            LogitDistillation(),
            SaliencyAlignment(student_layer="layer2", teacher_layer=-2),
            WeightSchedule({"saliency_alignment": {"warmup": 1}}),
            # The agreement signal is logged on rank zero only: the rule must broadcast its result.
            AdaptiveDistillationWeights(raise_on_lag=["saliency_alignment"], decay_on_progress=["kd"], balance=["kd"],
                                        max_share=0.001),
            GradCAMCallback(num_samples=4, layers=["layer2"], teacher_layers=[-2], log_images=False),
            Report(root),
        ]
        trainer = pl.Trainer(
            default_root_dir=root, accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=3,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, logger=False,
            callbacks=callbacks,
        )
        trainer.fit(task, loader, loader)
        print("fit done", flush=True)
    """
)


@pytest.mark.slow  # 76 s on 2 loaded cores; tests/distill/test_ddp.py keeps DDP in make test
def test_saliency_alignment_and_adaptive_weights_under_ddp(tmp_path: Path):
    output = run_ddp_script(SCRIPT, tmp_path, "ddp_fusion.py")
    written = sorted(path.name for path in tmp_path.glob("rank*.json"))
    assert written == ["rank0.json", "rank1.json"], (written, output[-4000:])
    results = [json.loads((tmp_path / name).read_text()) for name in written]
    assert results[0] == results[1], results  # same weights, same rule state and same student parameters on both ranks
    assert results[0]["updates"] == 3, results
    assert len(results[0]["weights"]) == 2, results  # LogitDistillation and SaliencyAlignment
