"""``make demo``: train a teacher, a student from scratch and a distilled student per task, then report on them.

Each training run is an ordinary ``visiondistill fit --config …`` call and each report an ordinary
``visiondistill report RUN_DIR …`` call (`visiondistill.reporting.write_report`); both are shown before they start, so
what the demo does can be repeated by hand step by step. A task's report goes to ``runs/demo/<task>/report.md`` (and
``report.html``); the segmentation demo's medical example, trained on other data without a teacher, gets its own in
``runs/demo/segmentation/lesions/``.

Run folders are written once (`visiondistill.cli.run_folders`), so a second ``make demo`` reuses what the first one
trained: a run whose ``last.ckpt`` reached its last epoch is reused, a run that was stopped is resumed with
``--ckpt_path last``, and only missing runs are trained. ``--skip-existing`` reuses every run that has a checkpoint,
finished or not. To train everything again, give another ``--runs`` folder (or delete ``runs/<task>/``).

Usage::

    python -m visiondistill.demo --task classification [--epochs N] [--skip-existing] [--quick]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TASKS", "DemoRun", "DemoSettings", "DemoTask", "SweepGain", "gain_note", "main", "run_task"]


@dataclass(frozen=True)
class DemoRun:
    """One training run of the demo.

    Attributes:
        label: What the run is, in words (printed before it starts).
        config: Its config file.
        name: Its run folder under ``<runs>/<task>/``.
        distilled: It distils from the task's teacher run (its checkpoint is passed on the command line).
        data_suffix: Appended to the data folder's name: a data folder holds one set of generation parameters, and
            each task's data differs.
    """

    label: str
    config: str
    name: str
    distilled: bool = False
    data_suffix: str = ""


@dataclass(frozen=True)
class SweepGain:
    """What the task's paired seed sweep measured, for the report's note next to the demo's own single-run gain.

    Attributes:
        metric: The test metric compared (``test/miou``); a fraction, shown in points.
        sweep: The sweep file (``benchmarks/sweeps/<task>.yaml``).
        measured: The sweep's paired result in words: mean gain ± std over its seeds and the seeds won.
    """

    metric: str
    sweep: str
    measured: str


@dataclass(frozen=True)
class DemoTask:
    """The runs of one task and the reports over them: ``(subfolder of <out>/<task>, run names)`` each."""

    runs: tuple[DemoRun, ...]
    reports: tuple[tuple[str, tuple[str, ...]], ...] = (("", ("teacher", "student_scratch", "student_distilled")),)
    #: Test images of the report's agreement measurement (``--num-images``); quick runs use `QUICK_IMAGES`.
    agreement_images: int = 32
    #: The paired seed sweep of scratch vs distilled student; the first report gets a note with both gains.
    gain: SweepGain | None = None

    @property
    def teacher(self) -> DemoRun:
        """The run the distilled runs learn from."""
        return next(run for run in self.runs if run.name == "teacher")


@dataclass(frozen=True)
class DemoSettings:
    """Where the demo writes, and the command-line overrides applied to every run."""

    runs: Path
    data_dir: Path
    out: Path
    overrides: tuple[str, ...] = ()
    skip_existing: bool = False
    #: Overrides every task's ``agreement_images`` when set (quick runs).
    num_images: int | None = None
    #: Quick reports: the explanation sections with one CAM method on two images (they check the pipeline).
    quick_explanations: bool = False
    #: Run each ``visiondistill fit`` in this process rather than in a fresh interpreter (quick runs: a fresh
    #: interpreter's imports cost more than a seconds-long training).
    in_process: bool = False

    def run_dir(self, task: str, run: DemoRun) -> Path:
        """The folder of one run."""
        return self.runs / task / run.name

    def checkpoint(self, task: str, run: DemoRun) -> Path:
        """The best checkpoint of one run."""
        return self.run_dir(task, run) / "checkpoints" / "best.ckpt"

    def data_of(self, run: DemoRun) -> Path:
        """The data folder of one run."""
        return self.data_dir.with_name(self.data_dir.name + run.data_suffix)


#: A seconds-long version of every run, for smoke tests and for trying the pipeline out.
QUICK_OVERRIDES = (
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--data.init_args.image_size=32",
    "--data.init_args.num_train=48",
    "--data.init_args.num_val=16",
    "--data.init_args.num_test=16",
    "--data.init_args.batch_size=8",
    "--data.init_args.num_workers=0",
)
#: Test images of the quick reports' agreement measurement.
QUICK_IMAGES = 8


def _runs(
    config_dir: str,
    suffix: str,
    networks: tuple[str, str, str],
    distilled_config: str = "shapes_distilled.yaml",
    distilled_name: str = "student_distilled",
) -> tuple[DemoRun, ...]:
    """The teacher, scratch and distilled runs of a task (``networks``: their labels' parts in parentheses)."""
    teacher, scratch, distilled = networks
    return (
        DemoRun(f"teacher ({teacher})", f"{config_dir}/shapes_teacher.yaml", "teacher", data_suffix=suffix),
        DemoRun(
            f"student, scratch ({scratch})",
            f"{config_dir}/shapes_student_scratch.yaml",
            "student_scratch",
            data_suffix=suffix,
        ),
        DemoRun(
            f"student, distilled {distilled}",
            f"{config_dir}/{distilled_config}",
            distilled_name,
            distilled=True,
            data_suffix=suffix,
        ),
    )


#: The demo of each task.
TASKS: dict[str, DemoTask] = {
    "classification": DemoTask(
        _runs(
            "configs/classification",
            "",
            ("resnet18", "test_resnet", "KD+AT (test_resnet)"),
            distilled_config="shapes_kd.yaml",
            distilled_name="student_kd",
        ),
        reports=(("", ("teacher", "student_scratch", "student_kd")),),
        agreement_images=64,  # the CAMs at stage -3 are 8×8 maps at 64 px; 64 images keep agreement stable
        gain=SweepGain(
            "test/acc_top1",
            "benchmarks/sweeps/classification.yaml",
            "mean gain +21.9 ± 5.4 test top-1 points over seeds 0-4 (scratch 57.8 ± 5.9, KD + AT 79.8 ± 2.1), won 5 "
            "of 5 seeds; seed 0, the demo's, +20.0 (README, Does distillation win?)",
        ),
    ),
    "segmentation": DemoTask(
        (
            *_runs(
                "configs/segmentation",
                "_segmentation",
                ("FPN resnet18", "Unet tu-test_resnet", "CWD (Unet tu-test_resnet)"),
            ),
            DemoRun(
                "lesions (Unet tu-test_resnet, Dice + CE)",
                "configs/segmentation/lesions_medical.yaml",
                "lesions",
                data_suffix="_lesions",
            ),
        ),
        reports=(("", ("teacher", "student_scratch", "student_distilled")), ("lesions", ("lesions",))),
        gain=SweepGain(
            "test/miou",
            "benchmarks/sweeps/segmentation_fpn.yaml",
            "mean gain +17.5 ± 7.6 test mIoU points over seeds 0-4 with the FPN teacher (scratch 34.3 ± 11.9, CWD "
            "51.8 ± 5.4), won 5 of 5 seeds; seed 0, the demo's, +8.0 (README, Does distillation win?)",
        ),
    ),
    "detection": DemoTask(
        _runs(
            "configs/detection",
            "_detection",
            ("FCOS resnet18, FPN 64", "FCOS test_resnet, FPN 32", "CWD+KD (FCOS test_resnet, FPN 32)"),
        ),
        gain=SweepGain(
            "test/map",
            "benchmarks/sweeps/detection.yaml",
            "mean gain +18.0 ± 1.8 test mAP points over seeds 0-4 (scratch 30.1 ± 1.8, CWD + KD 48.1 ± 1.1), won 5 of "
            "5 seeds; seed 0, the demo's, +16.9 (README, Does distillation win?)",
        ),
    ),
    "keypoints": DemoTask(
        _runs(
            "configs/keypoints",
            "_keypoints",
            ("resnet18 to layer3 + 2 deconv", "test_resnet + 2 deconv", "FPD + hint (test_resnet + 2 deconv)"),
        ),
        gain=SweepGain(
            "test/pck@0.05",
            "benchmarks/sweeps/keypoints.yaml",
            (
                "mean gain +1.9 ± 1.8 PCK@0.05 points over seeds 0-4 (scratch 72.9 ± 1.2, FPD + head hint 74.8 ± 1.7), "
                "won 3 of 5 seeds (seed 0 +0.0, seed 3 -0.1): better than FPD alone (+0.3 ± 1.1) but short of the bar "
                "(README, Does distillation win?; docs/keypoints_recipe.md)"
            ),
        ),
    ),
}


def max_epochs(run: DemoRun, overrides: Sequence[str]) -> int | None:
    """The epochs a run trains: the last ``--trainer.max_epochs`` override, else its config's ``trainer.max_epochs``."""
    for override in reversed(overrides):
        if override.startswith("--trainer.max_epochs="):
            return int(override.split("=", 1)[1])
    trainer = (yaml.safe_load(Path(run.config).read_text()) or {}).get("trainer") or {}
    return trainer.get("max_epochs")


def trained_epochs(run_dir: Path) -> int | None:
    """The epochs the run in ``run_dir`` has completed, from its ``checkpoints/last.ckpt`` (``None`` without one)."""
    from visiondistill.models.checkpoints import read_checkpoint

    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    checkpoint = read_checkpoint(last)
    # A checkpoint written at the end of epoch e (0-based) has completed e + 1 epochs; one written when the run was
    # stopped inside epoch e has completed e.
    loops = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    completed = ((loops.get("epoch_progress") or {}).get("current") or {}).get("processed")
    return int(completed) if completed is not None else int(checkpoint.get("epoch", -1)) + 1


def fit(task: str, run: DemoRun, teacher: DemoRun, settings: DemoSettings) -> float:
    """Runs ``visiondistill fit`` for one run, resumes it, or reuses it; returns its wall time (0 when reused).

    A run folder is written once: a finished run (``last.ckpt`` at its last epoch) is reused, a stopped one resumed
    with ``--ckpt_path last``; with ``settings.skip_existing`` any run that has a checkpoint is reused.
    """
    checkpoint = settings.checkpoint(task, run)
    if settings.skip_existing and checkpoint.is_file():
        print(f"\n== {run.label}: reusing {checkpoint}", flush=True)
        return 0.0
    run_dir = settings.run_dir(task, run)
    done, wanted = trained_epochs(run_dir), max_epochs(run, settings.overrides)
    if done is not None and wanted is not None and done >= wanted:
        print(f"\n== {run.label}: reusing {run_dir} ({done} epochs trained)", flush=True)
        return 0.0
    command = [sys.executable, "-m", "visiondistill.cli", "fit", "--config", run.config]
    command += [
        f"--trainer.logger.init_args.save_dir={settings.runs / task}",
        f"--data.init_args.data_dir={settings.data_of(run)}",
    ]
    if run.distilled:
        command.append(f"--model.init_args.teacher.checkpoint={settings.checkpoint(task, teacher)}")
    command += settings.overrides
    if done is not None:
        command.append("--ckpt_path=last")  # stopped after `done` epochs: go on where it stopped
    shown = "visiondistill " + " ".join(shlex.quote(part) for part in command[3:])
    print(f"\n== {run.label}\n$ {shown}", flush=True)
    start = time.perf_counter()
    if settings.in_process:
        from visiondistill.cli import main as cli_main

        argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when the demo's own arguments are in argv too
        try:
            code = cli_main(command[3:])
        finally:
            sys.argv = argv
        if code != 0:
            raise subprocess.CalledProcessError(code, shown)
    else:
        subprocess.run(command, check=True)
    return time.perf_counter() - start


def run_task(task: str, settings: DemoSettings) -> list[Path]:
    """Trains the runs of one task, then writes its reports with `visiondistill report`.

    Returns:
        The Markdown reports' paths.
    """
    from visiondistill.reporting import write_report

    demo = TASKS[task]
    for run in demo.runs:
        fit(task, run, demo.teacher, settings)
    by_name = {run.name: run for run in demo.runs}
    reports = []
    num_images = settings.num_images or demo.agreement_images
    for subfolder, names in demo.reports:
        folders = [settings.run_dir(task, by_name[name]) for name in names]
        out = settings.out / task / subfolder
        shown = " ".join(shlex.quote(str(folder)) for folder in folders)
        print(f"\n== report\n$ visiondistill report {shown} --out {out} --num-images {num_images}", flush=True)
        reports.append(write_report(folders, out, num_images=num_images, explanations=_explanations(settings))[0])
    if demo.gain is not None:
        note = gain_note(demo, [settings.run_dir(task, run) for run in demo.runs])
        print(f"\n{note}", flush=True)
        with open(reports[0], "a") as handle:
            handle.write(f"\n{note}\n")
    return reports


def gain_note(demo: DemoTask, run_dirs: Sequence[Path]) -> str:
    """One paragraph: this demo's distilled − scratch gain on the test split next to the paired sweep's mean gain.

    Args:
        demo: The task (its ``gain`` set).
        run_dirs: The run folders of ``demo.runs``, in that order.
    """
    from visiondistill.reporting.measure import load_run_module, test_metrics
    from visiondistill.reporting.runs import build_datamodule, read_run

    assert demo.gain is not None
    by_name = {run.name: folder for run, folder in zip(demo.runs, run_dirs, strict=True)}
    distilled_name = next(name for name in demo.reports[0][1] if name not in ("teacher", "student_scratch"))
    values = {}
    for name in ("student_scratch", distilled_name):
        run = read_run(by_name[name])
        values[name] = 100 * test_metrics(load_run_module(run), build_datamodule(run))[demo.gain.metric]
    gain = values[distilled_name] - values["student_scratch"]
    return (
        f"Distillation gain of this run ({demo.gain.metric}, one seed): {distilled_name} {values[distilled_name]:.1f} "
        f"− student_scratch {values['student_scratch']:.1f} = {gain:+.1f} points. Paired seed sweep "
        f"(`python benchmarks/seed_sweep.py {demo.gain.sweep}`, scratch and distilled sharing each seed): "
        f"{demo.gain.measured}."
    )


def _explanations(settings: DemoSettings) -> Any:
    """The report's explanation settings: the defaults, or for quick runs one CAM method on two images."""
    if not settings.quick_explanations:
        return True
    from visiondistill.reporting.sections.explanations import ExplanationSettings

    return ExplanationSettings(methods=("gradcam",), images=2, bootstrap=200, sensitivity_samples=2)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the demo for one task or all tasks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="all", choices=[*TASKS, "all"])
    parser.add_argument("--epochs", type=int, default=None, help="override every run's max_epochs")
    parser.add_argument("--runs", default="runs", help="root of the run folders")
    parser.add_argument("--data-dir", default="data/shapes", help="where the synthetic data sets are generated")
    parser.add_argument("--out", default="runs/demo", help="where the reports go")
    parser.add_argument(
        "--skip-existing", action="store_true", help="reuse every run that has a checkpoint, even an unfinished one"
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long runs on tiny data: checks the pipeline")
    args = parser.parse_args(argv)
    overrides = QUICK_OVERRIDES if args.quick else ()
    if args.epochs is not None:
        overrides = (*overrides, f"--trainer.max_epochs={args.epochs}")
    settings = DemoSettings(
        runs=Path(args.runs),
        data_dir=Path(args.data_dir),
        out=Path(args.out),
        overrides=overrides,
        skip_existing=args.skip_existing,
        num_images=QUICK_IMAGES if args.quick else None,
        quick_explanations=args.quick,
        in_process=args.quick,
    )
    try:
        for task in list(TASKS) if args.task == "all" else [args.task]:
            for report in run_task(task, settings):
                print(f"\nreport: {report}", flush=True)
    except subprocess.CalledProcessError as failed:  # the run printed its own error above; no traceback of ours
        print(
            f"error: `{failed.cmd if isinstance(failed.cmd, str) else shlex.join(failed.cmd)}` ended with exit status "
            f"{failed.returncode} (its message is above). The demo run again reuses the finished runs and goes on "
            "from where this one stopped.",
            file=sys.stderr,
        )
        return failed.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
