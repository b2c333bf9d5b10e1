"""Deterministic Gaussian clusters: one cluster per class, well separated; for fast tests."""

from __future__ import annotations

import numpy as np

from ssmoe_cli.data.base import Arrays, TensorDataModule


class Synthetic(TensorDataModule):
    name = "synthetic"

    def __init__(
        self,
        n_train: int = 2000,
        n_test: int = 500,
        spread: float = 1.0,
        separation: float = 6.0,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.n_train, self.n_test = n_train, n_test
        self.spread, self.separation, self.seed = spread, separation, seed

    def load(self) -> Arrays:
        rng = np.random.default_rng(self.seed)
        centres = rng.normal(size=(self.num_classes, self.in_features))
        centres *= self.separation / np.sqrt(self.in_features)

        def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
            y = rng.integers(0, self.num_classes, size=n)
            x = centres[y] + rng.normal(scale=self.spread / np.sqrt(self.in_features), size=(n, self.in_features))
            return x.astype(np.float32), y

        x_train, y_train = draw(self.n_train)
        x_test, y_test = draw(self.n_test)
        return Arrays(x_train, y_train, x_test, y_test)
