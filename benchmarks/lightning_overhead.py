"""`ssmoe train model=fcl` vs a plain PyTorch loop: same data, model, optimizer, batch size and epochs.

    python benchmarks/lightning_overhead.py --epochs 15 --threads 2
    python benchmarks/lightning_overhead.py --epochs 5 --threads 1 --rounds 3      # median of 3 ratios
    python benchmarks/lightning_overhead.py --epochs 3 -- callbacks.progress_bar=null   # one suspect off

The Lightning side is `ssmoe train` itself, run as a subprocess of this interpreter with its own MLflow
store in a temporary folder (the default logger=mlflow, checkpoints, progress bar, every callback):
its `time/train_s` and `time/epoch_s` are read back from the run. Its output is not a terminal, as in
a script or a sweep; --terminal makes Rich draw the progress bar as it does at a terminal.
The plain loop builds its data module, model and optimizer from the same composed config (the same
overrides) and runs, per epoch, one shuffled pass of optimizer steps and one validation pass (loss and
accuracy), as `fit` does; it writes no checkpoint and logs nothing. Both run back to back in one
invocation, with the same thread count; the ratio is the number to read on a shared machine. On a
noisy one, --rounds N alternates the two N times and reports the median of the N ratios (single
rounds of 5 epochs ranged 1.07x-1.43x on the same code, 2-core VM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def compose(overrides: list[str]) -> Any:
    """The config `ssmoe train` composes from these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def plain_loop(cfg: Any, epochs: int) -> tuple[float, float, float]:
    """Total seconds, mean seconds per epoch (training + validation pass) and test accuracy."""
    from hydra.utils import instantiate

    torch.manual_seed(cfg.seed)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = instantiate(cfg.model)
    opt = instantiate(cfg.optim)(model.parameters())
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
            correct, total = 0, torch.zeros(())
            for xb, yb in zip(xv.split(dm.eval_batch_size), yv.split(dm.eval_batch_size), strict=True):
                logits = model(xb).logits
                total += F.cross_entropy(logits, yb, reduction="sum")
                correct += int((logits.argmax(1) == yb).sum())
        times.append(time.perf_counter() - start)
    xt, yt = dm.test_set.tensors
    with torch.no_grad():
        acc = (model(xt).logits.argmax(1) == yt).float().mean().item()
    return sum(times), sum(times) / len(times), acc


def ssmoe_train(overrides: list[str], terminal: bool) -> dict[str, float]:
    """Run `ssmoe train OVERRIDES` in a temporary folder; the run's metrics from its MLflow store."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{Path(tmp) / 'mlflow.db'}"}
        if terminal:  # Rich then draws as on a terminal (the drawing goes to a pipe that is thrown away)
            env.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
        proc = subprocess.run(
            [sys.executable, "-m", "ssmoe_cli", "train", *overrides], cwd=tmp, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"ssmoe train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        runs = mlflow.search_runs(experiment_names=["ssmoe"])
        if runs.empty:  # logger=none, or another experiment_name
            sys.exit("ssmoe train logged no run in experiment 'ssmoe' (its times are read from it): keep logger=mlflow")
        return {k[len("metrics.") :]: float(v) for k, v in runs.iloc[0].items() if k.startswith("metrics.")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both loops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--rounds", type=int, default=1, help="alternate both loops N times; the median ratio")
    parser.add_argument("--terminal", action="store_true", help="ssmoe train's progress bar drawn as at a terminal")
    parser.add_argument("overrides", nargs="*", help="more `ssmoe train` overrides (after --), e.g. trainer.x=y")
    args = parser.parse_args()
    common = [
        "model=fcl",
        f"data={args.data}",
        f"seed={args.seed}",
        f"threads={args.threads}",
        f"trainer.max_epochs={args.epochs}",
    ]
    # Inference timing after training is not part of time/train_s; a few repeats keep the run short.
    overrides = [*common, "timing.repeats_b1=5", "timing.repeats_b256=3", *args.overrides]
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} epochs={args.epochs} data={args.data} overrides: {' '.join(args.overrides) or '-'}")
    ratios = []
    for round_ in range(1, args.rounds + 1):
        plain_total, plain_epoch, plain_acc = plain_loop(compose(common), args.epochs)
        metrics = ssmoe_train(overrides, args.terminal)
        lit_total, lit_epoch = metrics["time/train_s"], metrics["time/epoch_s"]
        ratios.append(lit_total / plain_total)
        print(f"round {round_}/{args.rounds}")
        print(f"  plain PyTorch loop : {plain_total:7.2f} s   {plain_epoch:6.3f} s/epoch   test acc {plain_acc:.4f}")
        print(
            f"  ssmoe train        : {lit_total:7.2f} s   {lit_epoch:6.3f} s/epoch   test acc {metrics['test/acc']:.4f}"
            "   (time/train_s, time/epoch_s)"
        )
        print(f"  ratio ssmoe / plain: {lit_total / plain_total:.2f}x total, {lit_epoch / plain_epoch:.2f}x per epoch")
    if args.rounds > 1:
        print(f"median ratio ssmoe / plain over {args.rounds} rounds: {statistics.median(ratios):.2f}x total")


if __name__ == "__main__":
    main()
