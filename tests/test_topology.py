"""Topologies: degrees, rewiring, fan-out and the route units they draw."""

from __future__ import annotations

import pytest
import torch

from ssmoe_cli.models.topology.base import ring_positions
from ssmoe_cli.models.topology.erdos_renyi import ErdosRenyi
from ssmoe_cli.models.topology.full import Full
from ssmoe_cli.models.topology.isolated import Isolated
from ssmoe_cli.models.topology.small_world import SmallWorld


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nearest(positions: torch.Tensor, degree: int) -> list[set[int]]:
    d = torch.cdist(positions, positions)
    out = []
    for b in range(len(positions)):
        order = sorted((float(d[b, a]), a) for a in range(len(positions)) if a != b)
        out.append({a for _, a in order[:degree]})
    return out


def test_small_world_without_rewiring_links_nearest_experts_in_the_map():
    pos = torch.randn(12, 2, generator=gen(1))
    src = SmallWorld(degree=3, rewire_p=0.0).in_links(12, pos, gen())
    assert src.shape == (12, 3)
    assert [set(r) for r in src.tolist()] == nearest(pos, 3)


def test_small_world_degree_is_exact_and_rewiring_rate_matches_p():
    n, degree, p = 200, 4, 0.3
    pos = torch.randn(n, 2, generator=gen(2))
    src = SmallWorld(degree=degree, rewire_p=p).in_links(n, pos, gen(3))
    near = nearest(pos, degree)
    for b, row in enumerate(src.tolist()):
        assert len(set(row)) == degree and b not in row
    rewired = sum(a not in near[b] for b, row in enumerate(src.tolist()) for a in row) / (n * degree)
    assert abs(rewired - p) < 0.05
    all_rewired = SmallWorld(degree=degree, rewire_p=1.0).in_links(n, pos, gen(4))
    assert all(not (set(row) & near[b]) for b, row in enumerate(all_rewired.tolist()))


def test_small_world_without_a_map_is_a_ring_lattice():
    src = SmallWorld(degree=2, rewire_p=0.0).in_links(8, None, gen())
    for b, row in enumerate(src.tolist()):
        assert set(row) == {(b - 1) % 8, (b + 1) % 8}
    assert torch.allclose(ring_positions(4)[1], torch.tensor([0.0, 1.0]), atol=1e-6)


def test_routes_have_fan_out_distinct_units_of_their_source():
    hidden, fan_out = 10, 3
    routes = SmallWorld(degree=2, rewire_p=0.5, fan_out=fan_out).routes(6, hidden, None, gen(5))
    assert routes.units.shape == (6, 2 * fan_out) and routes.valid.all()
    for b in range(6):
        for s, a in enumerate(routes.sources[b].tolist()):
            link = routes.units[b, s * fan_out : (s + 1) * fan_out]
            assert torch.all(link // hidden == a) and len(set((link % hidden).tolist())) == fan_out
    again = SmallWorld(degree=2, rewire_p=0.5, fan_out=fan_out).routes(6, hidden, None, gen(5))
    assert torch.equal(routes.units, again.units)  # reproducible from the seed


def test_erdos_renyi_density_padding_and_no_self_links():
    n, p = 60, 0.2
    src = ErdosRenyi(link_prob=p, fan_out=2).in_links(n, None, gen(6))
    links = [(a, b) for b, row in enumerate(src.tolist()) for a in row if a >= 0]
    assert all(a != b for a, b in links) and len(set(links)) == len(links)
    assert abs(len(links) / (n * (n - 1)) - p) < 0.03
    routes = ErdosRenyi(link_prob=p, fan_out=2).routes(n, 5, None, gen(6))
    assert torch.equal(routes.valid, (routes.sources >= 0).repeat_interleave(2, dim=1))


def test_full_and_isolated():
    src = Full(fan_out=1).in_links(5, None, gen())
    assert [sorted(r) for r in src.tolist()] == [[a for a in range(5) if a != b] for b in range(5)]
    assert Isolated().routes(5, 8, None, gen()).width == 0


def test_impossible_settings_are_refused():
    with pytest.raises(ValueError, match="degree"):
        SmallWorld(degree=4).in_links(4, None, gen())
    with pytest.raises(ValueError, match="fan_out"):
        SmallWorld(degree=1, fan_out=9).routes(4, 8, None, gen())
