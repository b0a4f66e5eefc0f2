"""What a trained network costs to run: parameters, FLOPs of one forward pass, and CPU latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_parameters", "measure_latency"]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, example: Tensor) -> int:
    """Floating-point operations of one forward pass (``torch.utils.flop_counter``; a multiply-add counts 2)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


@torch.inference_mode()
def measure_latency(model: nn.Module, example: Tensor, warmup: int = 10, runs: int = 50) -> float:
    """Median wall time of one forward pass, in milliseconds (eval mode, inference mode)."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - start)
        return 1000.0 * statistics.median(times)
    finally:
        model.train(was_training)
