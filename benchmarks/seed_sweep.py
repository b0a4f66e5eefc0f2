"""Train config variants over several seeds and print mean ± std of their metrics: claims need more than one run.

A sweep file names a teacher config (trained once, seed 0, unless ``teacher_checkpoint`` is given), the seeds, and
the runs to compare; each run is a shipped config plus edits. Every (run, seed) is an ordinary training through
`visiondistill.cli.VisionDistillCLI` in its own process, so several can run at once (``--parallel``) on a machine
with cores or a GPU to spare. Results (best validation score and the test metrics of the best checkpoint) go to
``<out>/results.json`` and a Markdown table is printed.

Started again with the same ``--out``, a sweep reuses every finished run (its ``result.json``) and resumes every run
that was stopped part-way (killed, machine lost) from its ``checkpoints/last.ckpt``, written after each epoch: a
teacher of an hour loses at most one epoch. A run stopped before its first epoch ended is moved to
``<run>.incomplete`` and started again.

Sweep file::

    teacher: configs/segmentation/shapes_teacher.yaml    # or {config: …, set: {…}} like a run
    seeds: [0, 1, 2]
    metric: miou                       # read as val/<metric> and test/<metric>
    baseline: scratch                  # optional: every other run is compared with it seed by seed (paired)
    runs:
      scratch: {config: configs/segmentation/shapes_student_scratch.yaml}
      pkd: {config: configs/segmentation/shapes_distilled.yaml, seeds: [0, 1, 2, 3, 4]}   # a run may set its own seeds
      pkd_t4: {config: configs/segmentation/shapes_distilled.yaml,
               set: {"trainer.callbacks.0.init_args.temperature": 4.0}}     # dotted path into the base config
      pkd_cwd:
        config: configs/segmentation/shapes_distilled.yaml
        add_callbacks: [{class_path: visiondistill.distill.ChannelWiseDistillation,
                         init_args: {source: logits, tau: 4.0, weight: 3.0}}]

With a ``baseline``, a second table pairs each run with the baseline on the seeds both trained (same seed: same
initialisation and data order): per seed the baseline's and the run's test metric and the gain, then the mean ± std of
the gains and how many seeds the run won. A recipe "wins" only if it wins on every seed, not on average.

Usage::

    python benchmarks/seed_sweep.py SWEEP.yaml [--out runs/sweep] [--parallel 2] [--accelerator auto]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml


def _set_path(config: dict, dotted: str, value: Any) -> None:
    """Sets ``config[a][b][0][c] = value`` for ``dotted = "a.b.0.c"`` (integers index lists)."""
    keys = dotted.split(".")
    node: Any = config
    for i, key in enumerate(keys[:-1]):
        index: Any = int(key) if isinstance(node, list) else key
        if isinstance(node, dict) and index not in node:
            node[index] = {}
        try:
            node = node[index]
        except (IndexError, KeyError, TypeError) as error:
            raise KeyError(f"cannot follow {'.'.join(keys[: i + 1])!r} in the config (edit {dotted!r})") from error
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def materialise(spec: dict[str, Any], out: Path, label: str) -> Path:
    """Writes a run's config (the base config with its edits) to ``<out>/configs/<label>.yaml``."""
    with open(spec["config"]) as handle:
        config = yaml.safe_load(handle)
    config = copy.deepcopy(config)
    for dotted, value in spec.get("set", {}).items():  # indices refer to the base config's lists
        _set_path(config, dotted, value)
    callbacks = config.setdefault("trainer", {}).setdefault("callbacks", [])
    drop = set(spec.get("remove_callbacks", []))
    callbacks[:] = [c for c in callbacks if c["class_path"].rsplit(".", 1)[-1] not in drop]
    callbacks[:0] = list(spec.get("add_callbacks", []))  # distillation terms first, like the shipped configs
    path = out / "configs" / f"{label}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def worker(argv: Sequence[str]) -> int:
    """Trains one config in this process, tests its best checkpoint and writes ``result.json``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--metric", required=True)
    args, cli_args = parser.parse_known_args(argv)
    from visiondistill.cli import run_cli
    from visiondistill.cli.errors import EXIT_TERMINATED

    start = time.perf_counter()
    # A `fit` command like a user's: the run-folder rules apply, last.ckpt is written every epoch, and a stopped run
    # given --ckpt_path last resumes where it stopped.
    # sys.argv keeps the worker's own arguments, though LightningCLI warns about them: with several devices, Lightning's
    # DDP launcher starts the other ranks with sys.argv, which must run this worker again.
    cli = run_cli(["fit", *cli_args])
    if cli is None:  # stopped by SIGTERM: no result, and not status 0
        return EXIT_TERMINATED
    best = cli.trainer.checkpoint_callback
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    result = {
        "val": float(best.best_model_score) if best.best_model_score is not None else None,
        "monitor": best.monitor,  # what "val" is: the checkpoint's monitored metric, not necessarily <metric>
        "test": {k: float(v) for k, v in tested.items()},
        "checkpoint": str(best.best_model_path),
        "seconds": time.perf_counter() - start,
    }
    Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


def _set_aside(run_dir: Path) -> Path:
    """Renames a run folder that cannot be resumed to ``<name>.incomplete[-N]`` (kept, not deleted)."""
    target, n = run_dir.with_name(f"{run_dir.name}.incomplete"), 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.incomplete-{n}")
    return run_dir.rename(target)


def _resume_args(run_dir: Path) -> list[str]:
    """``--ckpt_path last`` for a run stopped after an epoch; other stopped runs are set aside.

    A run without ``last.ckpt`` was stopped in its first epoch or written before sweeps resumed runs.
    """
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return ["--ckpt_path=last"]
    if run_dir.is_dir() and any(run_dir.iterdir()):
        print(f"   {run_dir} has no last.ckpt to resume from: moved to {_set_aside(run_dir)}", flush=True)
    return []


def _train(config: Path, run_dir: Path, seed: int, metric: str, extra: Sequence[str], log: Path) -> dict[str, Any]:
    result = run_dir / "result.json"
    if result.is_file():
        return json.loads(result.read_text())
    resume = _resume_args(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--result",
        str(result),
        "--metric",
        metric,
        "--config",
        str(config),
        f"--seed_everything={seed}",
        f"--trainer.logger.init_args.save_dir={run_dir.parent}",
        f"--trainer.logger.init_args.name={run_dir.name}",
        "--trainer.logger.init_args.version=",
        "--trainer.enable_progress_bar=false",
        *resume,
        *extra,
    ]
    with open(log, "a" if resume else "w") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0 or not result.is_file():
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        hint = " (start the sweep again to resume it)" if (run_dir / "checkpoints" / "last.ckpt").is_file() else ""
        raise RuntimeError(f"run {run_dir} failed (exit {completed.returncode}){hint}; end of {log}:\n{tail}")
    return json.loads(result.read_text())


def _prepare_data(configs: Sequence[Path]) -> None:
    """Generates each distinct data set once, before runs that share it start in parallel."""
    import importlib

    seen = set()
    for config in configs:
        with open(config) as handle:
            data = yaml.safe_load(handle)["data"]
        key = json.dumps(data, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        module, name = data["class_path"].rsplit(".", 1)
        getattr(importlib.import_module(module), name)(**data.get("init_args", {})).prepare_data()


def _summary(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    spread = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {spread:.1f}"


def paired_gains(
    results: dict[str, dict[int, Any]], baseline: str, key: str
) -> dict[str, list[tuple[int, float, float, float]]]:
    """Pairs every run with the baseline run on their shared seeds.

    Args:
        results: ``{run label: {seed: result}}``, a result holding ``"val"`` and ``"test": {metric: value}``.
        baseline: The label of the run the others are compared with.
        key: ``"val"`` for the best validation score, else a test metric's name (``"test/miou"``).

    Returns:
        ``{run label: [(seed, baseline value, run value, gain), ...]}`` for every run other than the baseline, seeds
        in ascending order; a seed is left out unless both runs have the value.

    Raises:
        KeyError: When ``baseline`` is not one of the runs.
    """
    if baseline not in results:
        raise KeyError(f"baseline {baseline!r} is not a run of the sweep (runs: {', '.join(results)})")

    def value(result: dict[str, Any]) -> float | None:
        return result.get("val") if key == "val" else result.get("test", {}).get(key)

    base = {int(seed): value(result) for seed, result in results[baseline].items()}
    paired: dict[str, list[tuple[int, float, float, float]]] = {}
    for label, runs in results.items():
        if label == baseline:
            continue
        rows = []
        for seed, result in sorted((int(s), r) for s, r in runs.items()):
            ours, theirs = value(result), base.get(seed)
            if ours is not None and theirs is not None:
                rows.append((seed, theirs, ours, ours - theirs))
        paired[label] = rows
    return paired


def paired_table(paired: dict[str, list[tuple[int, float, float, float]]], baseline: str, key: str) -> str:
    """The Markdown table of `paired_gains`: one row per (run, seed), then each run's mean ± std and wins (in %)."""
    lines = [f"| run | seed | {baseline} {key} | run {key} | gain |", "|---|---|---|---|---|"]
    for label, rows in paired.items():
        for seed, theirs, ours, gain in rows:
            lines.append(f"| {label} | {seed} | {100 * theirs:.1f} | {100 * ours:.1f} | {100 * gain:+.1f} |")
        if rows:
            gains = [row[3] for row in rows]
            wins = sum(gain > 0 for gain in gains)
            spread = 100 * statistics.stdev(gains) if len(gains) > 1 else 0.0
            lines.append(
                f"| {label} | mean | {_summary([row[1] for row in rows])} | {_summary([row[2] for row in rows])} "
                f"| {100 * statistics.fmean(gains):+.1f} ± {spread:.1f} (wins {wins}/{len(gains)}) |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the sweep described by a sweep file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        return worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep file (YAML)")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--accelerator", default=None, help="override trainer.accelerator (cpu, gpu, auto)")
    parser.add_argument("--num-workers", type=int, default=None, help="override data.init_args.num_workers")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every run's max_epochs")
    args = parser.parse_args(argv)
    with open(args.sweep) as handle:
        sweep = yaml.safe_load(handle)
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    metric, seeds = sweep.get("metric", "miou"), list(sweep.get("seeds", [0, 1, 2]))
    extra = []
    if args.accelerator:
        extra.append(f"--trainer.accelerator={args.accelerator}")
    if args.num_workers is not None:
        extra.append(f"--data.init_args.num_workers={args.num_workers}")

    def scaled(spec: dict[str, Any]) -> dict[str, Any]:
        if args.epochs_scale == 1.0:
            return spec
        with open(spec["config"]) as handle:
            epochs = yaml.safe_load(handle)["trainer"]["max_epochs"]
        edits = {"trainer.max_epochs": max(1, round(epochs * args.epochs_scale)), **spec.get("set", {})}
        return {**spec, "set": edits}

    teacher_checkpoint = sweep.get("teacher_checkpoint")
    if teacher_checkpoint is None and sweep.get("teacher"):
        spec = sweep["teacher"] if isinstance(sweep["teacher"], dict) else {"config": sweep["teacher"]}
        config = materialise(scaled(spec), out, "teacher")
        print(f"== teacher ({config})", flush=True)
        result = _train(config, out / "teacher", 0, metric, extra, out / "logs" / "teacher.log")
        teacher_checkpoint = result["checkpoint"]
        print(f"   val {metric} {100 * result['val']:.1f}, {result['seconds']:.0f} s", flush=True)
    teacher_args = [f"--model.init_args.teacher.checkpoint={teacher_checkpoint}"] if teacher_checkpoint else []

    jobs = []
    for label, spec in sweep["runs"].items():
        config = materialise(scaled(spec), out, label)
        with open(config) as handle:
            has_teacher = bool(yaml.safe_load(handle)["model"]["init_args"].get("teacher"))
        for seed in spec.get("seeds", seeds):
            run_extra = [*extra, *(teacher_args if has_teacher else [])]
            jobs.append((label, seed, config, out / f"{label}_seed{seed}", run_extra))
    _prepare_data([job[2] for job in jobs])
    print(f"== {len(jobs)} runs, {args.parallel} at a time", flush=True)

    def run(job: tuple) -> tuple[str, int, dict[str, Any]]:
        label, seed, config, run_dir, run_extra = job
        result = _train(config, run_dir, seed, metric, run_extra, out / "logs" / f"{run_dir.name}.log")
        monitor = result.get("monitor") or f"val/{metric}"
        print(f"   {label} seed {seed}: {monitor} {100 * result['val']:.1f}, {result['seconds']:.0f} s", flush=True)
        return label, seed, result

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        finished = list(pool.map(run, jobs))
    results: dict[str, dict[int, Any]] = {}
    for label, seed, result in finished:
        results.setdefault(label, {})[seed] = result
    (out / "results.json").write_text(json.dumps({"teacher": teacher_checkpoint, "runs": results}, indent=2))

    test_keys = sorted(
        {k for runs in results.values() for r in runs.values() for k in r["test"] if "/" in k and "loss" not in k}
    )
    shown = [k for k in test_keys if k.count("/") == 1][:4] + [k for k in test_keys if k.count("/") > 1]
    monitors = {r.get("monitor") or f"val/{metric}" for runs in results.values() for r in runs.values()}
    lines = [
        f"| run | seeds | best {' / '.join(sorted(monitors))} | " + " | ".join(shown) + " |",
        "|" + "---|" * (3 + len(shown)),
    ]
    for label, runs in results.items():
        vals = [r["val"] for r in runs.values() if r["val"] is not None]
        cells = [_summary([r["test"][k] for r in runs.values() if k in r["test"]]) for k in shown]
        lines.append(f"| {label} | {len(runs)} | {_summary(vals)} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    print("\n" + table + "\n\n(mean ± sample std over seeds, in %)", flush=True)
    baseline = sweep.get("baseline")
    if baseline:
        paired = "\n\n".join(
            paired_table(paired_gains(results, baseline, key), baseline, key) for key in (f"test/{metric}", "val")
        )
        (out / "paired.md").write_text(paired + "\n")
        print(
            f"\nPaired with {baseline} by seed (gain = run − {baseline}, in points; val = the best value of the "
            f"checkpoint's monitored metric):\n\n{paired}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
