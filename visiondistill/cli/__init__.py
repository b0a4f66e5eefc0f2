"""The ``visiondistill`` command: LightningCLI for ``fit|validate|test|predict`` plus a few tools.

Examples::

    visiondistill fit --config configs/classification/shapes_teacher.yaml
    visiondistill fit --config configs/classification/shapes_kd.yaml --trainer.max_epochs 5
    visiondistill synth --out data/shapes
    visiondistill report runs/classification/teacher runs/classification/student_scratch runs/classification/student_kd
    visiondistill export runs/classification/student_kd/checkpoints/best.ckpt --format onnx
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from pytorch_lightning.utilities.exceptions import SIGTERMException

from visiondistill.cli.errors import EXIT_TERMINATED, TERMINATED_MESSAGE, run_guarded
from visiondistill.cli.lightning import VisionDistillCLI
from visiondistill.cli.overrides import expand_callback_overrides


def _synth(argv: Sequence[str]) -> int:
    from visiondistill.data.synthesize import main

    return main(argv)


def _export(argv: Sequence[str]) -> int:
    from visiondistill.reporting.quantize import main  # `export` with `--quantize int8`

    return main(argv)


def _report(argv: Sequence[str]) -> int:
    from visiondistill.reporting.report import main

    return main(argv)


def _predict(argv: Sequence[str]) -> int:
    from visiondistill.reporting.predict import main

    return main(argv)


def _cache_teacher(argv: Sequence[str]) -> int:
    from visiondistill.cli.cache_teacher import main

    return main(argv)


def _tools() -> dict[str, tuple[Callable[[Sequence[str]], int], str]]:
    return {
        "synth": (_synth, "write the synthetic shapes data set to disk in standard formats"),
        "export": (
            _export,
            "export a checkpoint's student for the edge (ONNX), checked against PyTorch; --quantize int8 adds an INT8 "
            "model with fp32/INT8 accuracy and latency",
        ),
        "report": (_report, "compare teacher / scratch / distilled run folders: Markdown + HTML report, model cards"),
        "predict": (
            _predict,
            "a checkpoint's predictions on a folder of your own images (CSV, mask PNGs, COCO JSON; --explain adds "
            "saliency maps); replaces LightningCLI's predict",
        ),
        "cache-teacher": (
            _cache_teacher,
            "fill a training config's teacher-output cache (TeacherOutputCache) before `fit`: the teacher's logits "
            "on every (image, view)",
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``visiondistill`` console script.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 0, 2 for a refused command line or config, 1 for another user error (data, checkpoint,
        layer, run folder), which is printed as one ``error: …`` block without a traceback (see
        `visiondistill.cli.errors`; ``VISIONDISTILL_TRACEBACK=1`` or ``--traceback`` shows it), 143 for a training
        stopped by SIGTERM (`EXIT_TERMINATED`; resume it with ``--ckpt_path last``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    tools = _tools()
    if argv and argv[0] in tools:
        return run_guarded(tools[argv[0]][0], argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        extra = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in tools.items())
        print(f"visiondistill tools (besides LightningCLI's fit/validate/test):\n{extra}\n")
    return run_guarded(_lightning, argv)


def _lightning(argv: list[str]) -> int:
    return 0 if run_cli(expand_callback_overrides(argv)) is not None else EXIT_TERMINATED


def run_cli(args: list[str]) -> VisionDistillCLI | None:
    """Runs `VisionDistillCLI` on ``args``; ``None`` when SIGTERM stopped the training (its message is printed).

    Lightning's `SIGTERMException` is a `SystemExit` without a code, which would end the process with status 0; callers
    return `EXIT_TERMINATED` instead.
    """
    try:
        return VisionDistillCLI(args=args)
    except SIGTERMException:
        print(TERMINATED_MESSAGE, file=sys.stderr)
        return None


__all__ = ["VisionDistillCLI", "main", "run_cli"]
