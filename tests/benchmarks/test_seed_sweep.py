"""benchmarks/seed_sweep.py: the paired (same-seed) comparison of each run with the baseline."""

from __future__ import annotations

import pytest

from ..support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("seed_sweep")


def result(val: float, test: float) -> dict:
    return {"val": val, "test": {"test/miou": test}}


RESULTS = {
    # Seeds in another order than the baseline's, one seed the baseline lacks: pairing is by seed, not by position.
    "distilled": {2: result(0.60, 0.58), 0: result(0.50, 0.55), 7: result(0.9, 0.9)},
    "scratch": {2: result(0.65, 0.61), 1: result(0.30, 0.30), 0: result(0.40, 0.45)},
}


def test_pairs_by_seed_and_skips_unshared_seeds(sweep):
    paired = sweep.paired_gains(RESULTS, "scratch", "test/miou")
    assert list(paired) == ["distilled"]
    assert [(seed, base, ours) for seed, base, ours, _ in paired["distilled"]] == [(0, 0.45, 0.55), (2, 0.61, 0.58)]
    assert [round(gain, 6) for *_, gain in paired["distilled"]] == [0.1, -0.03]
    val = sweep.paired_gains(RESULTS, "scratch", "val")["distilled"]
    assert [round(gain, 6) for *_, gain in val] == [0.1, -0.05]


def test_table_reports_mean_gain_and_wins(sweep):
    table = sweep.paired_table(sweep.paired_gains(RESULTS, "scratch", "test/miou"), "scratch", "test/miou")
    assert "| distilled | 0 | 45.0 | 55.0 | +10.0 |" in table
    assert "| distilled | 2 | 61.0 | 58.0 | -3.0 |" in table
    # Mean gain +3.5, sample std of (+10, −3) = 9.2; one seed of two lost.
    assert "| +3.5 ± 9.2 (wins 1/2) |" in table


def test_unknown_baseline_is_named(sweep):
    with pytest.raises(KeyError, match="baseline 'teacher'.*scratch"):
        sweep.paired_gains(RESULTS, "teacher", "val")


@pytest.mark.slow  # two CLI trainings (~15 s); the fast suite keeps the set-aside rule below
def test_a_stopped_run_resumes_from_its_last_checkpoint(sweep, tmp_path):
    """A run the sweep lost part-way (result.json never written) continues from last.ckpt when the sweep restarts."""
    import torch

    from ..support.runs import distilled_config

    config = distilled_config(tmp_path, max_epochs=1)
    run_dir, log = tmp_path / "sweep" / "kd_seed0", tmp_path / "kd.log"
    first = sweep._train(config, run_dir, 0, "acc_top1", [], log)
    assert first["test"]["test/acc_top1"] >= 0 and (run_dir / "config.yaml").is_file()
    # Stopped after its first epoch: no result yet, last.ckpt at epoch 1; the sweep now asks for two epochs.
    (run_dir / "result.json").unlink()
    assert sweep._resume_args(run_dir) == ["--ckpt_path=last"]
    second = sweep._train(config, run_dir, 0, "acc_top1", ["--trainer.max_epochs=2"], log)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and last["global_step"] == 4  # 2 batches per epoch: one more epoch, not two
    assert "Resuming" in log.read_text() and second["checkpoint"].endswith("best.ckpt")
    assert not list(run_dir.parent.glob("*.incomplete*"))


def test_a_run_stopped_before_its_first_checkpoint_is_set_aside(sweep, tmp_path):
    run_dir = tmp_path / "kd_seed0"
    assert sweep._resume_args(run_dir) == []  # nothing there yet
    run_dir.mkdir()
    assert sweep._resume_args(run_dir) == []  # an empty folder is started in
    (run_dir / "events.out.tfevents.1.host").write_bytes(b"x")
    assert sweep._resume_args(run_dir) == [] and not run_dir.exists()
    assert (tmp_path / "kd_seed0.incomplete" / "events.out.tfevents.1.host").read_bytes() == b"x"  # kept, not deleted
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}")
    sweep._resume_args(run_dir)
    assert (tmp_path / "kd_seed0.incomplete-2" / "config.yaml").is_file()
