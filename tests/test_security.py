"""Loading is reading data: a checkpoint, a model file or a run's config can never run code.

Each crafted file below tries one way in; each must be refused with one clear error and leave no
trace (the file its payload would write does not exist afterwards)."""

from __future__ import annotations

import os

import pytest
import torch

from ssmoe_cli.checkpoint import load_checkpoint
from ssmoe_cli.errors import SsmoeError


class _Payload:
    """Pickles to a call of os.system: what a hostile checkpoint holds."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_unpickle_code_is_refused_as_unsafe(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(SsmoeError, match=r"refused as unsafe: .*unpickle code \(posix.system\)") as err:
        load_checkpoint(tmp_path / "evil.ckpt")
    assert "weights_only=False" not in str(err.value)
    assert not marker.exists()


def test_a_weights_only_checkpoint_loads_and_broken_ones_are_one_error(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.ckpt")
    assert torch.equal(load_checkpoint(tmp_path / "ok.ckpt")["state_dict"]["w"], torch.ones(2))
    whole = (tmp_path / "ok.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SsmoeError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.ckpt")
    with pytest.raises(SsmoeError, match="not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
