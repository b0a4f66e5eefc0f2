"""The teacher-output cache under DDP: every rank writes its own shards, reads the others' at the epoch's end, and
then serves the views another rank filled without a teacher forward.

The fast test runs two cache objects as ranks 0 and 1 on one folder in this process; the slow one runs Lightning's
DDP on two CPU processes (gloo)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from visiondistill.data import ShapesClassification
from visiondistill.distill import TeacherOutputCache
from visiondistill.tasks import ClassificationTask

from ..support.ddp import run_ddp_script

pytestmark = pytest.mark.filterwarnings("ignore:.*has no images of class", "ignore:.*num_workers")

DATA = {"image_size": 32, "batch_size": 4, "num_workers": 0, "num_train": 16, "num_val": 4, "num_test": 0}


def shapes(data_dir: Path) -> ShapesClassification:
    module = ShapesClassification(str(data_dir), num_views=1, verify_images=False, **DATA)
    module.prepare_data()
    module.setup("fit")
    return module


def test_each_rank_writes_its_own_shards_and_reads_the_others(tmp_path):
    data = shapes(tmp_path / "shapes")
    torch.manual_seed(0)
    teacher = ClassificationTask(student={"name": "test_resnet"}, num_classes=6).student.eval()
    folder = tmp_path / "cache"
    ranks = [TeacherOutputCache(directory=str(folder)) for _ in range(2)]
    stores = [cache.open(teacher, data.train_dataset, rank=rank) for rank, cache in enumerate(ranks)]
    halves = [torch.tensor([[i, 0] for i in range(rank, 16, 2)]) for rank in range(2)]
    for cache, store, ids in zip(ranks, stores, halves, strict=True):
        with torch.no_grad():
            store.store(ids, teacher(torch.stack([data.train_dataset.view(int(i), 0) for i, _ in ids])))
        cache._unsaved.append(ids)
        cache.flush()
    assert sorted(path.name for path in (folder / "shards").iterdir()) == ["rank0-00000.pt", "rank1-00000.pt"]
    assert [len(store) for store in stores] == [8, 8]
    assert [cache.reload() for cache in ranks] == [1, 1]  # each reads the other's shard, not its own again
    assert [len(store) for store in stores] == [16, 16]
    ids = torch.tensor([[1, 0], [2, 0]])
    torch.testing.assert_close(stores[0].lookup(ids), stores[1].lookup(ids))


SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    from pathlib import Path
    warnings.filterwarnings("ignore")
    import pytorch_lightning as pl
    import torch
    from visiondistill.data import ShapesClassification
    from visiondistill.distill import LogitDistillation, TeacherOutputCache
    from visiondistill.tasks import ClassificationTask

    DATA = {data}


    class Report(pl.Callback):
        def __init__(self, cache):
            self.cache, self.forwards = cache, []

        def on_train_epoch_end(self, trainer, pl_module):
            self.forwards.append(self.cache.teacher_forwards)

        def on_fit_end(self, trainer, pl_module):
            ids = torch.tensor([[i, 0] for i in range(16)])
            with torch.no_grad():
                fresh = pl_module.teacher(torch.stack([trainer.train_dataloader.dataset.view(i, 0) for i in range(16)]))
            cached = self.cache.store.lookup(ids)
            result = {{
                "forwards_per_epoch": self.forwards, "cached_steps": self.cache.cached_steps,
                "entries": len(self.cache.store), "matches": bool(torch.allclose(cached, fresh, atol=1e-2, rtol=1e-2)),
            }}
            Path(sys.argv[1], f"rank{{trainer.global_rank}}.json").write_text(json.dumps(result))


    if __name__ == "__main__":
        root = sys.argv[1]
        pl.seed_everything(0)
        data = ShapesClassification(str(Path(root) / "shapes"), num_views=1, verify_images=False, **DATA)
        task = ClassificationTask(student={{"name": "test_resnet"}}, teacher={{"name": "test_resnet"}}, num_classes=6)
        cache = TeacherOutputCache(directory=str(Path(root) / "cache"))
        trainer = pl.Trainer(
            default_root_dir=root, accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2,
            limit_val_batches=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, callbacks=[LogitDistillation(), cache, Report(cache)],
        )
        trainer.fit(task, datamodule=data)
        print("fit done", flush=True)
    """
)


@pytest.mark.slow
def test_the_cache_under_ddp_on_two_cpu_processes(tmp_path: Path):
    shapes(tmp_path / "shapes")  # generated here, once, so the two ranks only read it
    output = run_ddp_script(SCRIPT.format(data=repr(DATA)), tmp_path, "ddp_cache.py")
    results = {path.name: json.loads(path.read_text()) for path in tmp_path.glob("rank*.json")}
    assert sorted(results) == ["rank0.json", "rank1.json"], output[-4000:]
    shards = sorted(path.name.split("-")[0] for path in (tmp_path / "cache" / "shards").glob("rank*.pt"))
    assert set(shards) == {"rank0", "rank1"}  # each rank wrote shards of its own
    for rank, result in results.items():
        # 16 images, 2 ranks, batches of 4: 2 steps per rank and epoch. Epoch 1 fills each rank's half; after the
        # epoch-end exchange, epoch 2 (another split of the samples between the ranks) runs no teacher at all.
        assert result["forwards_per_epoch"] == [2, 2], (rank, result)
        assert result["cached_steps"] == 2, (rank, result)
        assert result["entries"] == 16 and result["matches"], (rank, result)
