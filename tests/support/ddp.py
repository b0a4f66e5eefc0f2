"""Runs a two-process DDP script in a fresh interpreter, with a time limit, for the DDP tests of several packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_ddp_script(script: str, root: Path, name: str, timeout: float = 240) -> str:
    """Writes ``script`` to ``root/name``, runs it with ``root`` as its argument, and returns its output.

    The script must print ``fit done`` at its end; each rank writes its own result file under ``root`` (ranks share
    one stdout, so their printed lines can interleave).

    Raises:
        pytest.fail.Exception: When the run times out (a collective call waiting on one rank), exits non-zero or
            does not finish its fit.
    """
    path = root / name
    path.write_text(script)
    try:
        result = subprocess.run([sys.executable, str(path), str(root)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"DDP fit did not finish in {timeout:g} s: a collective call is probably waiting on one rank")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "fit done" in output, output[-4000:]
    return output
