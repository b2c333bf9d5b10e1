"""How good a map does the parametric t-SNE gate learn on Fashion-MNIST, at what cost?

Runs PTSNEGate.prepare on the 55,000 training images (normalised, flattened) with either objective
(``--objective batch``: P within fixed batches; ``knn_graph``: P over whole-set kNN edges) and prints:
- pretraining wall time (fixed batches + P or the kNN graph, t-SNE epochs, centre placement),
- trustworthiness T(12) of the embedding of held-out TEST points vs their inputs
  (sklearn.manifold.trustworthiness, on a subsample: it is O(n^2)),
- 1-NN accuracy of the test points' map positions against the labelled training map,
- the gate's parameter count (what every sample pays on top of its experts),
- routing speed: test points per second through the whole gate (map, distances, top-k) in
  batches of 256, the training batch size.

    python benchmarks/ptsne_fashion.py                       # the gate's defaults
    python benchmarks/ptsne_fashion.py --hidden 32 --batch-size 2000 --threads 1
    python benchmarks/ptsne_fashion.py --objective knn_graph --hidden 64
"""

from __future__ import annotations

import argparse
import inspect
import time

import torch
from sklearn.manifold import trustworthiness
from sklearn.neighbors import KNeighborsClassifier

from ssmoe_cli.data.fashion_mnist import FashionMNIST
from ssmoe_cli.models.gating.ptsne import PTSNEGate


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Defaults are the gate's own (conf/gating/ptsne.yaml repeats them).
    d = {k: v.default for k, v in inspect.signature(PTSNEGate.__init__).parameters.items()}
    ap.add_argument("--hidden", type=int, nargs="*", default=list(d["hidden"]), help="hidden sizes of f (none: linear)")
    ap.add_argument("--epochs", type=int, default=d["pretrain_epochs"], help="pretrain_epochs")
    ap.add_argument("--lr", type=float, default=d["pretrain_lr"], help="pretrain_lr")
    ap.add_argument("--batch-size", type=int, default=d["tsne_batch_size"], help="tsne_batch_size")
    ap.add_argument("--perplexity", type=float, default=d["perplexity"])
    ap.add_argument("--dof", type=float, default=d["dof"], help="Student-t degrees of freedom of Q")
    ap.add_argument("--neighbors", default=str(d["neighbors"]), help="'auto' (3 x perplexity), an int, or 'all'")
    ap.add_argument("--exaggeration", type=float, default=d["early_exaggeration"], help="early_exaggeration")
    ap.add_argument("--exaggeration-epochs", type=int, default=d["exaggeration_epochs"])
    ap.add_argument(
        "--final-exaggeration", type=float, default=d["exaggeration"], help="exaggeration after the early phase"
    )
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default=d["pretrain_lr_schedule"])
    ap.add_argument("--tsne-samples", type=int, default=d["tsne_samples"], help="train t-SNE on a random subset")
    ap.add_argument("--objective", choices=["batch", "knn_graph"], default=d["objective"])
    ap.add_argument(
        "--knn-pca", type=int, default=d["knn_pca"], help="knn_graph: PCA dims for the kNN search (0: none)"
    )
    ap.add_argument("--experts", type=int, default=10)
    ap.add_argument("--eval-points", type=int, default=2000, help="test points for T(12)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dm = FashionMNIST(in_features=784, num_classes=10)
    dm.setup()
    x_train, y_train = dm.train_set.tensors
    x_test, y_test = dm.test_set.tensors

    neighbors = (
        {"auto": "auto", "all": None}[args.neighbors] if args.neighbors in ("auto", "all") else int(args.neighbors)
    )
    gate = PTSNEGate(
        784,
        args.experts,
        k=1,
        hidden=args.hidden,
        pretrain_epochs=args.epochs,
        pretrain_lr=args.lr,
        tsne_batch_size=args.batch_size,
        perplexity=args.perplexity,
        neighbors=neighbors,
        dof=args.dof,
        early_exaggeration=args.exaggeration,
        exaggeration_epochs=args.exaggeration_epochs,
        exaggeration=args.final_exaggeration,
        pretrain_lr_schedule=args.lr_schedule,
        tsne_samples=args.tsne_samples,
        objective=args.objective,
        knn_pca=args.knn_pca or None,
    )
    # Time the t-SNE epochs apart from the rest of prepare (fixed batches + P, centres).
    timing: dict[str, float] = {}
    pretrain = gate.pretrain

    def timed_pretrain(epochs: int) -> list[float]:
        start = time.perf_counter()
        timing["kl"] = pretrain(epochs)[-1] if epochs else float("nan")
        timing["epochs"] = time.perf_counter() - start
        return []

    gate.pretrain = timed_pretrain  # type: ignore[method-assign]
    start, cpu_start = time.perf_counter(), time.process_time()
    gate.prepare(x_train, torch.Generator().manual_seed(args.seed))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    emb_train, emb_test = gate.embed(x_train).numpy(), gate.embed(x_test).numpy()
    sub = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(1))[: args.eval_points]
    t12 = trustworthiness(x_test[sub].numpy(), emb_test[sub.numpy()], n_neighbors=12)
    knn = KNeighborsClassifier(n_neighbors=1).fit(emb_train, y_train.numpy())
    acc = knn.score(emb_test, y_test.numpy())
    routed = torch.bincount(gate(x_test).indices[:, 0], minlength=args.experts)
    gate.eval()
    with torch.no_grad():
        for i in range(0, 2560, 256):  # warm-up
            gate(x_test[i : i + 256])
        start = time.perf_counter()
        for i in range(0, len(x_test), 256):
            gate(x_test[i : i + 256])
        points_per_s = len(x_test) / (time.perf_counter() - start)

    print(
        f"hidden={args.hidden} epochs={args.epochs} batch={args.batch_size} perplexity={args.perplexity} "
        f"neighbors={args.neighbors} dof={args.dof} lr={args.lr} ({args.lr_schedule}) "
        f"exaggeration={args.exaggeration}x{args.exaggeration_epochs} then {args.final_exaggeration} "
        f"tsne_samples={args.tsne_samples} objective={args.objective} knn_pca={args.knn_pca} "
        f"threads={args.threads}"
    )
    print(f"  pretraining wall time   {seconds:8.1f} s ({timing['epochs']:.1f} s in t-SNE epochs)")
    # CPU time is the fairer figure on a shared machine (with 1 thread it is the wall time an idle
    # core would take); wall time is what the run cost here.
    print(f"  pretraining CPU time    {cpu_seconds:8.1f} s")
    print(f"  final epoch mean KL     {timing['kl']:8.3f}")
    print(f"  T(12), {len(sub)} test points {t12:8.4f}")
    print(f"  1-NN test accuracy      {acc:8.4f}")
    print(f"  gate parameters         {gate.active_params():8d} (active per sample, incl. centres)")
    print(f"  routing speed           {points_per_s:8.0f} points/s (batches of 256)")
    print(f"  temperature             {float(gate.temperature):8.3g}")
    print(f"  test load per expert    {routed.tolist()}")


if __name__ == "__main__":
    main()
