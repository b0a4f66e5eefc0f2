"""Loads a script from ``benchmarks/`` as a module, the way ``python benchmarks/<name>.py`` would see its imports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Imports ``benchmarks/<name>.py`` as the module ``<name>_benchmark``.

    The scripts import ``_common`` from their own folder, which Python puts on ``sys.path`` for a script it runs;
    this puts it there for the tests too. The module is registered in ``sys.modules`` (dataclasses look it up there).
    """
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
