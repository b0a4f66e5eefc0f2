"""Distillation under Lightning's DDP: two CPU processes (gloo), no deadlock, teacher untouched on every rank.

Each rank writes its verdict to its own file (``rank<N>.txt``): lines both ranks print to one stdout can interleave.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..support.ddp import run_ddp_script

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    from pathlib import Path
    warnings.filterwarnings("ignore")
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from visiondistill.distill import AttentionTransfer, FeatureHint, LogitDistillation
    from visiondistill.models import ClassifierSpec
    from visiondistill.tasks import ClassificationTask

    EXTRA_CALLBACKS = []  # explanation callbacks join here when present
    try:
        from visiondistill.explain import FeatureMapCallback, GradCAMCallback
        EXTRA_CALLBACKS = [GradCAMCallback(num_samples=4), FeatureMapCallback(num_samples=4)]
    except ImportError:
        pass


    class TeacherCheck(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            self.before = {k: v.clone() for k, v in pl_module.teacher.state_dict().items()}

        def on_fit_end(self, trainer, pl_module):
            after = pl_module.teacher.state_dict()
            assert all(torch.equal(v, after[k]) for k, v in self.before.items()), "teacher changed"
            assert not pl_module.teacher.training
            Path(trainer.default_root_dir, f"rank{trainer.global_rank}.txt").write_text("teacher unchanged")


    if __name__ == "__main__":
        root = sys.argv[1]
        pl.seed_everything(0)
        data = TensorDataset(torch.randn(32, 3, 32, 32), torch.arange(32) % 4)
        loader = DataLoader(data, batch_size=4)
        task = ClassificationTask(
            student=ClassifierSpec(name="test_resnet"), teacher=ClassifierSpec(name="test_efficientnet"), num_classes=4
        )
        trainer = pl.Trainer(
            default_root_dir=root, accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            callbacks=[LogitDistillation(), AttentionTransfer([-2, -1], [-2, -1]), FeatureHint(-2, -2),
                       TeacherCheck(), *EXTRA_CALLBACKS],
        )
        trainer.fit(task, loader, loader)
        print("fit done", flush=True)
    """
)


def test_distillation_under_ddp_on_two_cpu_processes(tmp_path: Path):
    output = run_ddp_script(SCRIPT, tmp_path, "ddp_fit.py")
    verdicts = {path.name: path.read_text() for path in tmp_path.glob("rank*.txt")}
    assert verdicts == {"rank0.txt": "teacher unchanged", "rank1.txt": "teacher unchanged"}, (verdicts, output[-4000:])
