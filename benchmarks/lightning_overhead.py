"""Lightning loop vs a plain PyTorch loop: same data, model, optimizer and epochs, measured in one run.

    python benchmarks/lightning_overhead.py --epochs 15

Prints seconds per epoch (training + validation pass) and test accuracy of each, and the ratio.
The Lightning side is built exactly as `ssmoe train model=fcl` builds it (ClassifierModule,
deterministic trainer, RichProgressBar, last-epoch checkpoint).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ssmoe_cli.callbacks import EpochTimer
from ssmoe_cli.data.fashion_mnist import FashionMNIST
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.module import ClassifierModule


def plain_loop(dm: FashionMNIST, epochs: int, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = FCL(784, 10, hidden=[300, 100])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = dm.train_set.tensors
    xv, yv = dm.val_set.tensors
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(x)).split(dm.batch_size):
            loss = F.cross_entropy(model(x[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            sum(F.cross_entropy(model(xb).logits, yb) for xb, yb in zip(xv.split(1024), yv.split(1024), strict=True))
        times.append(time.perf_counter() - start)
    xt, yt = dm.test_set.tensors
    with torch.no_grad():
        acc = (model(xt).logits.argmax(1) == yt).float().mean().item()
    return sum(times) / len(times), acc


def lightning_loop(dm: FashionMNIST, epochs: int, seed: int, progress: bool) -> tuple[float, float]:
    pl.seed_everything(seed, verbose=False)
    module = ClassifierModule(FCL(784, 10, hidden=[300, 100]), num_classes=10)
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer]
    if progress:
        callbacks.append(pl.callbacks.RichProgressBar())
    with tempfile.TemporaryDirectory() as tmp:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp, filename="last", save_top_k=1))
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            deterministic=True,
            logger=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            callbacks=callbacks,
            default_root_dir=tmp,
        )
        trainer.fit(module, datamodule=dm)
        acc = trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"]
    return timer.mean, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="Lightning without the rich progress bar")
    args = parser.parse_args()
    dm = FashionMNIST(in_features=784, num_classes=10)
    dm.setup()
    plain_s, plain_acc = plain_loop(dm, args.epochs, args.seed)
    lit_s, lit_acc = lightning_loop(dm, args.epochs, args.seed, progress=not args.no_progress)
    print(f"threads={torch.get_num_threads()} epochs={args.epochs} train={len(dm.train_set)} val={len(dm.val_set)}")
    print(f"plain PyTorch loop : {plain_s:6.2f} s/epoch   test acc {plain_acc:.4f}")
    print(f"Lightning (ssmoe)  : {lit_s:6.2f} s/epoch   test acc {lit_acc:.4f}")
    print(f"ratio Lightning / plain: {lit_s / plain_s:.2f}x")


if __name__ == "__main__":
    main()
