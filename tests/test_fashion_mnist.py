"""A short run on the real Fashion-MNIST (Debian package dataset-fashion-mnist), when it is installed."""

from __future__ import annotations

import pytest
from conftest import FASHION_DIR

pytestmark = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.mark.slow
def test_fcl_learns_fashion_mnist_in_a_few_hundred_steps(run_cli):
    proc = run_cli(
        "train",
        "model=fcl",
        "logger=none",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=300",
        "trainer.enable_progress_bar=false",
        "timing.repeats_b1=5",
        "timing.repeats_b256=3",
    )
    line = next(line for line in proc.stdout.splitlines() if "test accuracy" in line)
    acc = float(line.split("│")[2])
    assert acc > 0.80, line
