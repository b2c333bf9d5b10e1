"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): works offline anywhere."""

from __future__ import annotations

import numpy as np

from ssmoe_cli.data.base import Arrays, TensorDataModule


class Digits(TensorDataModule):
    name = "digits"

    def __init__(self, test_fraction: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.test_fraction = test_fraction

    def load(self) -> Arrays:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        # The set has no official test split: hold out a fixed, seed-independent fraction.
        perm = np.random.default_rng(12345).permutation(len(x))
        n_test = int(round(self.test_fraction * len(x)))
        test, train = perm[:n_test], perm[n_test:]
        return Arrays(x[train], y[train], x[test], y[test])
