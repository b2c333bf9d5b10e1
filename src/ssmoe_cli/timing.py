"""The one latency timer: the median wall time of calls, for run metrics and kernel choices."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


@torch.inference_mode()
def latency_ms(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int, warmup: int = 5) -> float:
    """Median wall time of `fn(x)` in milliseconds, after `warmup` untimed calls.

    An nn.Module runs in eval mode (its mode is restored afterwards). On a CUDA input the device is
    synchronised around each call, so the time is the kernels', not their launch's.
    """
    if repeats < 1:
        raise ValueError(f"latency_ms: repeats={repeats} must be >= 1")
    was_training = fn.training if isinstance(fn, nn.Module) else None
    if isinstance(fn, nn.Module):
        fn.eval()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    try:
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        if isinstance(fn, nn.Module) and was_training is not None:
            fn.train(was_training)
    return statistics.median(times)
