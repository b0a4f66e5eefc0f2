"""INT8 for the edge, every task: the fp32 and INT8 student (and the fp32 teacher) in onnxruntime, side by side.

For each task (classification, segmentation, detection, keypoints, and the multi-task student) this trains a teacher
and a distilled student briefly with the task's shapes configs (``configs/<task>/shapes_teacher.yaml`` and the
distilled config, with fewer images and epochs and without the explanation callbacks), or takes a given student run
folder (``--run TASK=FOLDER``), then runs ``visiondistill export <run>/checkpoints/best.ckpt --quantize int8``
(`visiondistill.reporting.quantize`) and prints one table: the task's headline test metric of the fp32 and INT8
student, their batch-1 latency in onnxruntime and its ratio, the agreement of INT8 with fp32, and the teacher's fp32
metric and latency. The latencies in the table are timed again after the export, round-robin (one run of each
model per round, `interleaved_latency`), so that fp32, INT8 and the teacher see the same load.

The multi-task student (``configs/multitask/shapes_multitask.yaml``: a classification and a segmentation head) is
distilled from the classification and the segmentation task's teachers (the same runs, reused when those tasks ran
first, trained otherwise; each teacher's spec is read from its checkpoint) and gets one row per head: the head's
metric, the head's INT8–fp32 agreement and the teacher of that head (the student's latency is the whole network's).

The students are briefly trained: the table compares INT8 with fp32 of the same network, not a good network with a
bad one. Latencies come from one process on a CPU that may be shared: compare the ratio within a row rather than
absolute milliseconds across machines.

    nice -n 5 python benchmarks/int8.py [--tasks classification detection multitask] [--epochs 3] [--batch-size 16]
        [--teacher-epochs 2] [--num-train 400] [--num-test 100] [--out /tmp/visiondistill-int8] [--threads 1]
        [--run detection=runs/x]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]


class Task(NamedTuple):
    """One task's configs, its headline metric and the name of its image-size setting."""

    teacher: str
    student: str
    metric: str
    size_key: str = "image_size"
    #: A multi-task student's heads and the task whose teacher teaches each (its teacher config is that task's).
    head_teachers: tuple[tuple[str, str], ...] = ()


TASKS = {
    "classification": Task(
        "configs/classification/shapes_teacher.yaml", "configs/classification/shapes_kd.yaml", "test/acc_top1"
    ),
    "segmentation": Task(
        "configs/segmentation/shapes_teacher.yaml", "configs/segmentation/shapes_distilled.yaml", "test/miou"
    ),
    "detection": Task("configs/detection/shapes_teacher.yaml", "configs/detection/shapes_distilled.yaml", "test/map"),
    "keypoints": Task(
        "configs/keypoints/shapes_teacher.yaml",
        "configs/keypoints/shapes_distilled.yaml",
        "test/pck@0.1",
        size_key="input_size",
    ),
    "multitask": Task(
        "",
        "configs/multitask/shapes_multitask.yaml",
        "",
        head_teachers=(("cls", "classification"), ("seg", "segmentation")),
    ),
}
#: A multi-task student's headline test metric per head (`visiondistill.tasks.multitask.HEAD_METRICS`).
HEAD_METRICS = {"cls": "test/cls/acc_top1", "seg": "test/seg/miou"}


def run_config(
    source: Path,
    out: Path,
    task: str,
    name: str,
    epochs: int,
    data: dict[str, Any],
    teacher: Path | dict[str, Path] | None = None,
) -> Path:
    """A copy of a shipped config for a short run: ``epochs``, ``data`` overrides, no explanation callbacks, CPU.

    The run goes to ``<out>/<task>/<name>``, its data to ``<out>/data/<task>``; a distilled run's teacher checkpoint
    is replaced by ``teacher``, a multi-task run's teachers by ``teacher[head]`` (each spec then read from that
    checkpoint). Returns the written config's path.
    """
    config = yaml.safe_load(source.read_text())
    trainer = config["trainer"]
    trainer |= {"max_epochs": epochs, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    trainer["logger"]["init_args"] |= {"save_dir": str(out / task), "name": name, "version": ""}
    # Grad-CAM and feature-map pictures cost time and play no part in the export.
    callbacks = trainer.get("callbacks") or []
    trainer["callbacks"] = [c for c in callbacks if not str(c.get("class_path")).startswith("visiondistill.explain")]
    config["data"]["init_args"] |= {"data_dir": str(out / "data" / task), "num_workers": 0, **data}
    if isinstance(teacher, dict):  # the shipped specs may not match these teacher runs: their checkpoints tell
        entries = config["model"]["init_args"]["teachers"]
        keep = ("id", "head", "in_channels")
        config["model"]["init_args"]["teachers"] = [
            {key: entry[key] for key in keep if key in entry} | {"checkpoint": str(teacher[entry["head"]])}
            for entry in entries
        ]
    elif teacher is not None:
        config["model"]["init_args"]["teacher"]["checkpoint"] = str(teacher)
    path = out / "configs" / f"{task}_{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit(config: Path, threads: int, log: Path) -> Path:
    """``visiondistill fit --config`` in a subprocess (``threads`` torch threads); returns the run's best.ckpt."""
    settings = yaml.safe_load(config.read_text())["trainer"]["logger"]["init_args"]
    best = Path(settings["save_dir"]) / settings["name"] / "checkpoints" / "best.ckpt"
    if best.is_file():
        print(f"reusing {best}", flush=True)
        return best
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "visiondistill.cli", "fit", "--config", str(config)]
    with log.open("a") as stream:
        subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)
    return best


def export_int8(checkpoint: Path, args: argparse.Namespace, image_size: int | None = None) -> dict[str, Any]:
    """``visiondistill export CKPT --quantize int8``, in process; returns the written summary.

    ``image_size``: ``--image-size`` of the export, for runs whose checkpoint does not record their datamodule's
    (the segmentation and multi-task shapes datamodules record none, and the export then assumes 64 px).
    """
    from visiondistill.reporting.quantize import main as export_main

    argv = [str(checkpoint), "--quantize", "int8", "--calibration-images", str(args.calibration_images)]
    argv += ["--image-size", str(image_size)] if image_size else []
    argv += ["--latency-runs", str(args.latency_runs), "--threads", str(args.threads)]
    if export_main(argv) != 0:
        raise SystemExit(f"visiondistill export {' '.join(argv)} failed")
    return json.loads(checkpoint.with_suffix(".quantization.json").read_text())


def interleaved_latency(paths: list[Path], runs: int, threads: int, warmup: int = 10) -> list[float]:
    """Median batch-1 latency (ms) of each ONNX file, timed round-robin: one run of each per round.

    Timing the models in turn, rather than one after the other, exposes them to the same load of a shared CPU, so
    their ratio holds even when the absolute times drift.
    """
    import numpy as np

    from visiondistill.reporting.quantize import _session

    sessions = [_session(path, threads) for path in paths]
    feeds = []
    for session in sessions:
        shape = session.get_inputs()[0].shape
        image = np.random.default_rng(0).random((1, *shape[1:]), dtype=np.float32)
        feeds.append({session.get_inputs()[0].name: image})
    for session, feed in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for index, (session, feed) in enumerate(zip(sessions, feeds, strict=True)):
            start = time.perf_counter()
            session.run(None, feed)
            times[index].append(1000.0 * (time.perf_counter() - start))
    return [statistics.median(values) for values in times]


def row(task: str, metric: str, summary: dict[str, Any], latency: list[float] | None = None) -> dict[str, Any]:
    """The table's row of one task from its quantization summary.

    ``latency``: the interleaved medians of fp32, INT8 (and teacher) in place of the summary's sequential ones.
    """
    fp32, int8, teacher = summary["fp32"], summary["int8"], summary.get("teacher")
    if latency is not None:
        fp32, int8 = {**fp32, "latency_ms": latency[0]}, {**int8, "latency_ms": latency[1]}
        teacher = {**teacher, "latency_ms": latency[2]} if teacher and len(latency) > 2 else teacher
    return {
        "task": task,
        "metric": metric,
        "fp32": fp32["metrics"].get(metric, float("nan")),
        "int8": int8["metrics"].get(metric, float("nan")),
        "fp32_ms": fp32["latency_ms"],
        "int8_ms": int8["latency_ms"],
        "ratio": int8["latency_ms"] / fp32["latency_ms"],
        "agreement": summary["agreement"],
        "teacher": teacher["metrics"].get(metric, float("nan")) if teacher else None,
        "teacher_ms": teacher["latency_ms"] if teacher else None,
    }


def head_rows(task: str, summary: dict[str, Any], latency: list[float]) -> list[dict[str, Any]]:
    """The rows of a multi-task summary, one per head: its metric, its agreement and the teacher of that head.

    ``latency``: the interleaved medians of fp32, INT8 and then the teachers in ``summary["teachers"]``'s order.
    """
    rows = []
    teachers = list(summary.get("teachers") or {})
    for head, figures in summary["heads"].items():
        tid = next((t for t in teachers if summary["teacher_heads"].get(t) == head), None)
        view = {**summary, "agreement": figures["agreement"], "teacher": summary["teachers"][tid] if tid else None}
        times = latency[:2] + ([latency[2 + teachers.index(tid)]] if tid else [])
        rows.append(row(f"{task} ({head} head)", HEAD_METRICS[head], view, times))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as one Markdown table."""
    lines = [
        "| task | metric | fp32 | INT8 | latency fp32 (ms) | latency INT8 (ms) | INT8/fp32 latency | INT8–fp32 "
        "agreement | teacher fp32 | teacher latency (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        teacher = ("–", "–") if r["teacher"] is None else (f"{r['teacher']:.3f}", f"{r['teacher_ms']:.2f}")
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['fp32']:.3f} | {r['int8']:.3f} | {r['fp32_ms']:.2f} | "
            f"{r['int8_ms']:.2f} | {r['ratio']:.2f} | {r['agreement']:.3f} | {teacher[0]} | {teacher[1]} |"
        )
    return "\n".join(lines)


def parse_runs(values: list[str]) -> dict[str, Path]:
    """``TASK=FOLDER`` pairs (``--run``) as a mapping; unknown tasks and missing folders are refused."""
    runs = {}
    for value in values:
        task, _, folder = value.partition("=")
        if task not in TASKS or not folder:
            raise SystemExit(f"--run wants TASK=FOLDER with TASK one of {', '.join(TASKS)}, got {value!r}")
        if not (Path(folder) / "checkpoints" / "best.ckpt").is_file():
            raise SystemExit(f"--run {value}: no checkpoints/best.ckpt in {folder}")
        runs[task] = Path(folder)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each distilled student")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, help="students' batch size (default: each config's)")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--out", default="/tmp/visiondistill-int8")
    parser.add_argument("--run", action="append", default=[], help="TASK=FOLDER: a trained student run to export")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out, given = Path(args.out).resolve(), parse_runs(args.run)
    rows, started = [], time.time()
    for task in args.tasks:
        spec, begun = TASKS[task], time.time()
        if task in given:
            checkpoint = given[task] / "checkpoints" / "best.ckpt"
        else:
            data = {spec.size_key: args.image_size, "num_train": args.num_train, "num_val": args.num_val}
            data["num_test"] = args.num_test
            log = out / f"{task}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            # Run names carry the settings that differ between runs on the same data: a later call with more student
            # epochs reuses the teacher (and the generated data) and trains a new student.
            sources = spec.head_teachers or (("", task),)  # a multi-task student: the teachers of other tasks
            teachers = {
                head: fit(
                    run_config(
                        ROOT / TASKS[source].teacher,
                        out,
                        source,
                        f"teacher_{args.teacher_epochs}ep",
                        args.teacher_epochs,
                        data,
                    ),
                    args.threads,
                    out / f"{source}.log",
                )
                for head, source in sources
            }
            teacher = teachers if spec.head_teachers else teachers[""]
            student = {"batch_size": args.batch_size} if args.batch_size else {}
            name = f"student_{args.epochs}ep" + (f"_bs{args.batch_size}" if args.batch_size else "")
            config = run_config(ROOT / spec.student, out, task, name, args.epochs, data | student, teacher=teacher)
            checkpoint = fit(config, args.threads, log)
        summary = export_int8(checkpoint, args, None if task in given else args.image_size)
        paths = [checkpoint.with_suffix(".onnx"), checkpoint.with_suffix(".int8.onnx")]
        paths += [checkpoint.with_suffix(".teacher.onnx")] if summary.get("teacher") else []
        paths += [checkpoint.with_suffix(f".teacher.{tid}.onnx") for tid in summary.get("teachers") or {}]
        latency = interleaved_latency(paths, args.latency_runs, args.threads)
        heads = summary.get("heads")
        added = head_rows(task, summary, latency) if heads else [row(task, spec.metric, summary, latency)]
        rows += added
        print(f"== {task}: {time.time() - begun:.0f} s", flush=True)
        print(table(added), flush=True)
        (out / "int8.json").write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(table(rows))
    print(f"\ncommand: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} logical CPUs (shared with other "
        f"jobs, load average {os.getloadavg()[0]:.1f} at the end: compare the ratios), torch and onnxruntime "
        f"{args.threads} thread(s); latency: median of {args.latency_runs} batch-1 runs per model, timed round-robin; "
        f"{time.time() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
