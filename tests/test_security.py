"""Loading is reading data: a checkpoint, a model file or a run's config can never run code.

Each crafted file below tries one way in. The payloads are live (Hydra's instantiate, which the
loader used to call, does write the file: checked first), and each must be refused with one clear
error that leaves no trace: the file the payload would write does not exist afterwards."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import yaml

from ssmoe_cli.checkpoint import load_checkpoint
from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.export import export_model, load_model
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.gating.base import Gate
from ssmoe_cli.models.registry import build, classes_of, registry

CONF = Path(__file__).resolve().parents[1] / "conf"
FCL_CFG = {"_target_": "ssmoe_cli.models.fcl.FCL", "in_features": 8, "num_classes": 3, "hidden": [4]}
MOE_CFG = {
    "_target_": "ssmoe_cli.models.moe.MixtureOfExperts",
    "in_features": 8,
    "num_classes": 3,
    "num_experts": 4,
    "k": 2,
    "expert_hidden": [6],
    "gate": {
        "_target_": "ssmoe_cli.models.gating.noisy_topk.NoisyTopKGate",
        "in_features": 8,
        "num_experts": 4,
        "k": 2,
    },
    "topology": {"_target_": "ssmoe_cli.models.topology.small_world.SmallWorld", "degree": 1, "fan_out": 2},
}


def copyfile(src: Path, dst: Path) -> dict:
    """shutil.copyfile, reached through a module attribute of an ssmoe_cli module (the issue's path)."""
    return {"_target_": "ssmoe_cli.data.idx_dataset.shutil.copyfile", "_args_": [str(src), str(dst)]}


def urlretrieve(src: Path, dst: Path) -> dict:
    """urllib's urlretrieve (any URL to any path); a file:// URL proves it without a network."""
    return {
        "_target_": "ssmoe_cli.data.idx_dataset.urllib.request.urlretrieve",
        "url": src.as_uri(),
        "filename": str(dst),
    }


def attacks(src: Path, dst: Path) -> dict[str, tuple[dict, str]]:
    """Crafted model configs, each with the words its refusal must contain."""
    return {
        "top-level copyfile": (copyfile(src, dst), "is not a model class ssmoe defines"),
        "top-level urlretrieve": (urlretrieve(src, dst), "is not a model class ssmoe defines"),
        "gate of a valid MoE": ({**MOE_CFG, "gate": copyfile(src, dst)}, "model_config.gate._target_"),
        "topology of a valid MoE": ({**MOE_CFG, "topology": urlretrieve(src, dst)}, "model_config.topology._target_"),
        "argument of a valid FCL": ({**FCL_CFG, "hidden": copyfile(src, dst)}, "model_config.hidden must be"),
        "_args_ on a model class": ({**FCL_CFG, "_args_": [str(src), str(dst)]}, "takes no argument '_args_'"),
        "_partial_": ({**FCL_CFG, "_partial_": True}, "takes no argument '_partial_'"),
        "_recursive_ in a gate": (
            {**MOE_CFG, "gate": {**MOE_CFG["gate"], "_recursive_": False}},
            "takes no argument '_recursive_'",
        ),
        "_convert_": ({**FCL_CFG, "_convert_": "all"}, "takes no argument '_convert_'"),
        "unregistered ssmoe_cli class": (
            {"_target_": "ssmoe_cli.data.fashion_mnist.FashionMNIST", "root": str(dst), "in_features": 1},
            "is not a model class ssmoe defines",
        ),
        "unknown key": ({**FCL_CFG, "callback": "os.system"}, "takes no argument 'callback'"),
        "a key that would forge a second line": ({**FCL_CFG, "x\nssmoe: ok": 1}, "takes no argument 'x\\nssmoe: ok'"),
        "a model too large to allocate": ({**FCL_CFG, "hidden": [10**7, 10**7]}, "cannot be built from these"),
        "a gate where the topology goes": (
            {**MOE_CFG, "topology": MOE_CFG["gate"]},
            "is a gate, but model_config.topology must be a topology",
        ),
    }


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    src = tmp_path / "secret.txt"
    src.write_text("not yours")
    return src


def test_the_payloads_are_live_under_hydra(tmp_path, secret):
    """What the loader used to do with these files: Hydra copies and fetches."""
    from hydra.utils import instantiate

    instantiate(copyfile(secret, tmp_path / "copied"))
    instantiate(urlretrieve(secret, tmp_path / "fetched"))
    assert (tmp_path / "copied").read_text() == (tmp_path / "fetched").read_text() == "not yours"


@pytest.mark.parametrize("name", list(attacks(Path("/a"), Path("/b"))))
def test_a_crafted_model_file_is_refused_without_side_effects(tmp_path, secret, name):
    stolen = tmp_path / "stolen"
    config, words = attacks(secret, stolen)[name]
    path = tmp_path / "crafted.safetensors"
    export_model(FCL(8, 3, hidden=[4]), config, path)  # valid tensors, crafted metadata
    with pytest.raises(SsmoeError, match="refusing to load") as err:
        load_model(path)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not stolen.exists()


def test_a_name_is_no_key_only_class_objects_are(tmp_path, secret):
    """A name grants nothing; a class object the caller holds may be built."""
    stolen = tmp_path / "stolen"
    path = tmp_path / "crafted.safetensors"
    export_model(FCL(8, 3, hidden=[4]), copyfile(secret, stolen), path)
    with pytest.raises(TypeError, match="trusted takes classes, not str"):
        load_model(path, trusted=["ssmoe_cli.data.idx_dataset.shutil.copyfile"])
    assert not stolen.exists()

    class TinyNet(FCL):  # a user's own model class, imported by the user
        pass

    user_cfg = {**FCL_CFG, "_target_": f"{TinyNet.__module__}.{TinyNet.__qualname__}"}
    export_model(TinyNet(8, 3, hidden=[4]), user_cfg, path)
    with pytest.raises(SsmoeError, match="is not a model class ssmoe defines"):
        load_model(path)
    assert isinstance(load_model(path, trusted=[TinyNet]), TinyNet)
    # A trusted class still takes plain values only, never a nested payload.
    export_model(TinyNet(8, 3, hidden=[4]), {**user_cfg, "hidden": copyfile(secret, stolen)}, path)
    with pytest.raises(SsmoeError, match="refusing to load"):
        load_model(path, trusted=[TinyNet])
    assert not stolen.exists()


def test_a_training_job_trusts_exactly_the_classes_it_built():
    model = build(MOE_CFG)
    names = {f"{c.__module__}.{c.__qualname__}" for c in classes_of(model, MOE_CFG)}
    assert names == {MOE_CFG["_target_"], MOE_CFG["gate"]["_target_"], MOE_CFG["topology"]["_target_"]}


def _target(path: Path) -> str:
    """The `_target_` of a config option, following its defaults list to the option it extends
    (conf/gating/ptsne_random.yaml is `- ptsne` plus one override)."""
    node = yaml.safe_load(path.read_text())
    node = node.get("model", node)  # model=moe & co. are global packages: model.*
    if "_target_" in node:
        return node["_target_"]
    bases = [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    assert len(bases) == 1, f"{path}: no _target_ and no single option it extends"
    return _target(path.parent / f"{bases[0]}.yaml")


def _targets(folder: str) -> set[str]:
    return {_target(path) for path in (CONF / folder).glob("*.yaml")}


def test_the_loader_can_build_exactly_the_shipped_model_gate_and_topology_classes():
    import inspect

    entries = registry()
    shipped = {"model": _targets("model") | _targets("baseline"), "gate": _targets("gating")}
    shipped["topology"] = _targets("topology") | {"ssmoe_cli.models.topology.erdos_renyi.ErdosRenyi"}
    assert {kind: {t for t, e in entries.items() if e.kind == kind} for kind in shipped} == shipped
    assert set(entries) == set().union(*shipped.values())
    for target, entry in entries.items():
        # The registered name is the class's own, and each argument is one of its parameters.
        assert f"{entry.cls.__module__}.{entry.cls.__qualname__}" == target
        assert set(entry.args) == set(inspect.signature(entry.cls).parameters), target


def test_the_shipped_configs_build_through_the_registry():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    for model in ("fcl", "moe", "sgmoe", "ptsne_moe"):
        with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
            cfg = compose("train", overrides=[f"model={model}", "data=digits", "hydra.runtime.output_dir=/tmp"])
        config = OmegaConf.to_container(cfg.model, resolve=True)
        assert type(build(config)).__name__ == config["_target_"].rpartition(".")[2]


class _Payload:
    """Pickles to a call of os.system: what a hostile checkpoint holds."""

    def __init__(self, marker: Path) -> None:
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


def fake_run(run_dir: Path, model_config: dict, checkpoint: dict) -> Path:
    """A run folder as `ssmoe train` leaves it: .hydra/config.yaml and checkpoints/last.ckpt."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": model_config}))
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def test_ssmoe_export_refuses_a_crafted_run_folder(run_cli, tmp_path, secret):
    stolen, marker = tmp_path / "stolen", tmp_path / "pwned"
    weights = {"state_dict": {f"model.{k}": v for k, v in FCL(8, 3, hidden=[4]).state_dict().items()}}
    cases = {
        "top": (copyfile(secret, stolen), weights, "is not a model class ssmoe defines"),
        "nested": ({**MOE_CFG, "gate": urlretrieve(secret, stolen)}, weights, "model.gate._target_"),
        "pickle": (FCL_CFG, {**weights, "x": _Payload(marker)}, "refused as unsafe"),
    }
    for name, (config, checkpoint, words) in cases.items():
        run_dir = fake_run(tmp_path / name, config, checkpoint)
        proc = run_cli("export", str(run_dir), check=False)
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stderr.startswith("ssmoe: error:") and words in proc.stderr, (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, name
        assert not (run_dir / "model.safetensors").exists()
    assert not stolen.exists() and not marker.exists()
    # The same folder with an honest config exports (so the refusals above are the payloads').
    run_dir = fake_run(tmp_path / "honest", FCL_CFG, weights)
    assert "wrote" in run_cli("export", str(run_dir)).stdout


def test_registry_rows_come_from_constructor_annotations():
    """A new gate needs no hand-written row: its annotated signature is the row, and an argument
    with no plain-data form is refused rather than loosely typed."""
    from ssmoe_cli.models.registry import _entry

    class Annotated(Gate):
        def __init__(
            self,
            in_features: int,
            num_experts: int,
            k: int,
            widths: Sequence[int] = (4,),
            scale: float | None = None,
            mode: str = "a",
            on: bool = True,
        ) -> None:
            super().__init__(in_features, num_experts, k)

    entry = _entry(Annotated, "gate")
    assert entry.args["widths"].accepts([1, 2]) and not entry.args["widths"].accepts([1.5])
    assert entry.args["scale"].accepts(None) and entry.args["scale"].accepts(0.5)
    assert not entry.args["scale"].accepts(float("inf")) and not entry.args["scale"].accepts("x")
    assert entry.args["on"].accepts(True) and not entry.args["on"].accepts(1)
    assert not entry.args["in_features"].accepts(True)  # a bool is not an integer here

    class Opaque(Gate):
        def __init__(self, in_features: int, num_experts: int, k: int, fn: object = None) -> None:
            super().__init__(in_features, num_experts, k)

    with pytest.raises(TypeError, match=r"Opaque\(fn\).*no plain-data form"):
        _entry(Opaque, "gate")
