"""Which MoE dispatch path wins where, and does inference stay flat as experts are added at fixed k?

    python benchmarks/moe_dispatch.py                 # inference, batch 256 and 1
    python benchmarks/moe_dispatch.py --train         # also a training step (forward, backward, Adam step)

Experts 784 -> 64 -> 10 (the default of model=sgmoe / ptsne_moe). Routing is drawn uniformly at
random per sample (a balanced gate), so the timing is the experts' and the dispatch's, not a gate's;
the last table repeats it with a real noisy top-k gate (whose own cost grows with E: 784 x E).
Prints milliseconds (median of repeats) per dispatch path (dense, capacity, pairs, grouped), what
`auto` picks, and the ratio 64 experts / 8 experts at fixed k with auto's pick (issue 15's target:
at most 1.3x at k = 2, batch 256), and the floor the matmul kernel itself sets under that ratio
(layer 0 alone, the same pairs split evenly over 8 or 64 experts). Run it alone on the machine
(flock /tmp/ssmoe-bench.lock ...).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssmoe_cli.models.gating.base import Gate, GateOutput
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.moe import MixtureOfExperts


class UniformGate(Gate):
    """Routes each sample to k distinct experts drawn at random, equal weights (benchmark only). The
    draw is made once per batch size and reused, so that no gate cost (an argsort over B x E, which
    grows with E) enters the dispatch's time."""

    def __init__(self, num_experts: int, k: int) -> None:
        super().__init__()
        self.num_experts, self.k = num_experts, k
        self._drawn: dict[int, GateOutput] = {}

    def forward(self, x: torch.Tensor) -> GateOutput:
        if len(x) not in self._drawn:
            idx = torch.rand(len(x), self.num_experts).argsort(1)[:, : self.k]
            val = torch.full((len(x), self.k), 1.0 / self.k)
            weights = torch.zeros(len(x), self.num_experts).scatter(1, idx, val)
            self._drawn[len(x)] = GateOutput(weights, idx, val, {}, None)
        return self._drawn[len(x)]

    def active_params(self) -> int:
        return 0

    def active_macs(self) -> int:
        return 0


PATHS = ("dense", "capacity", "pairs", "grouped", "sorted")


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def model(num_experts: int, k: int, dispatch: str, gate: str) -> MixtureOfExperts:
    torch.manual_seed(0)
    g = UniformGate(num_experts, k) if gate == "uniform" else NoisyTopKGate(784, num_experts, k)
    if gate == "noisy_topk":
        with torch.no_grad():
            g.w_gate.weight.normal_(std=0.05)
    return MixtureOfExperts(784, 10, g, num_experts=num_experts, k=k, expert_hidden=[64], dispatch=dispatch)


def kernel_floor(repeats: int, batch: int = 256, k: int = 2) -> None:
    """Layer 0 alone (784 -> 64) as one batched matmul, every expert on an equal share of the batch's
    pairs (no padding, no dispatch): the same multiply-adds for 8 and 64 experts, so their ratio is
    what the matmul kernel itself costs per expert, a floor under the dispatch's 64 / 8 ratio."""
    times = {}
    with torch.inference_mode():
        for e in (8, 64):
            x, w = torch.randn(e, batch * k // e, 784), torch.randn(e, 64, 784)
            times[e] = timed(lambda x=x, w=w: torch.bmm(x, w.transpose(1, 2)), repeats)
    print(
        f"\nkernel floor, layer 0 only, {batch * k} pairs split evenly: 8 experts x {batch * k // 8} rows "
        f"{times[8]:.3f} ms, 64 x {batch * k // 64} rows {times[64]:.3f} ms: {times[64] / times[8]:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--train", action="store_true", help="also time a training step")
    args = parser.parse_args()
    torch.manual_seed(0)
    x256, x1 = torch.randn(256, 784), torch.randn(1, 784)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call, median of {args.repeats}")

    def run(gate: str, batch: torch.Tensor, train: bool) -> dict[tuple[int, int, str], float]:
        res = {}
        for k in args.ks:
            for e in args.experts:
                if k > e:
                    continue
                for dispatch in PATHS:
                    m = model(e, k, dispatch, gate)
                    if train:
                        m.train()
                        # ssmoe train's default optimizer (optim.*: Adam, fused)
                        opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)

                        def step(m=m, opt=opt) -> None:
                            opt.zero_grad(set_to_none=True)
                            m(batch).logits.sum().backward()
                            opt.step()

                        res[k, e, dispatch] = timed(step, args.repeats)
                    else:
                        m.eval()
                        with torch.inference_mode():
                            res[k, e, dispatch] = timed(lambda m=m: m(batch), args.repeats)
        return res

    def table(title: str, res: dict[tuple[int, int, str], float], batch: int) -> None:
        print(f"\n{title}")
        print(f"{'k':>3} {'experts':>8} " + " ".join(f"{p:>9}" for p in PATHS) + "  fastest   auto picks")
        for k, e in sorted({(k, e) for k, e, _ in res}):
            times = {p: res[k, e, p] for p in PATHS}
            auto = model(e, k, "auto", "uniform").resolved_dispatch(k, batch)
            cells = " ".join(f"{times[p]:9.3f}" for p in PATHS)
            print(f"{k:>3} {e:>8} {cells}  {min(times, key=times.get):9} {auto}")
        for k in args.ks:
            if (k, 8, "dense") in res and (k, 64, "dense") in res:
                auto8 = res[k, 8, model(8, k, "auto", "uniform").resolved_dispatch(k, batch)]
                auto64 = res[k, 64, model(64, k, "auto", "uniform").resolved_dispatch(k, batch)]
                ratios = ", ".join(f"{p} {res[k, 64, p] / res[k, 8, p]:.2f}x" for p in PATHS)
                print(f"k={k}: 64 / 8 experts with auto = {auto64 / auto8:.2f}x ({ratios})")

    table("inference, batch 256, uniform routing", run("uniform", x256, False), 256)
    kernel_floor(args.repeats)
    table("inference, batch 1, uniform routing", run("uniform", x1, False), 1)
    table("inference, batch 256, noisy top-k gate (its 784 x E matmul included)", run("noisy_topk", x256, False), 256)
    if args.train:
        title = "training step (forward, backward, fused Adam step), batch 256, uniform routing"
        table(title, run("uniform", x256, True), 256)


if __name__ == "__main__":
    main()
