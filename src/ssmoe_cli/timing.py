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
    module = fn if isinstance(fn, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    try:
        for _ in range(warmup):
            fn(x)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        if module is not None:
            module.train(was_training)
    return statistics.median(times)
