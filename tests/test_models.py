"""Models and accounting: FCL size, the masked layer, and the metrics read from masks."""

from __future__ import annotations

import torch

from ssmoe_cli.models.accounting import dense_accounting, nonzero_params, total_params
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.layers import MaskedLinear


def test_lenet_300_100_has_266610_parameters():
    model = FCL(784, 10, hidden=[300, 100])
    assert total_params(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    acc = dense_accounting(model)
    assert acc.params_nonzero == acc.active_per_sample == 266_610
    assert acc.flops_per_sample == 784 * 300 + 300 * 100 + 100 * 10


def test_fcl_returns_logits_and_no_aux():
    out = FCL(5, 3, hidden=[4])(torch.randn(2, 5))
    assert out.logits.shape == (2, 3) and out.aux == {}


def test_masked_linear_zeroes_and_blocks_gradient():
    torch.manual_seed(0)
    layer = MaskedLinear(4, 3)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, :2] = False
    layer.set_mask(mask)
    assert torch.all(layer.weight[0, :2] == 0)
    layer(torch.randn(5, 4)).sum().backward()
    assert torch.all(layer.weight.grad[0, :2] == 0)
    assert nonzero_params(layer) == 12 - 2 + 3
    # Masked entries count as zero even if something writes into the raw weight.
    with torch.no_grad():
        layer.weight[0, 0] = 5.0
    assert nonzero_params(layer) == 12 - 2 + 3
    assert torch.equal(
        layer(torch.ones(1, 4)), torch.nn.functional.linear(torch.ones(1, 4), layer.weight * mask, layer.bias)
    )
