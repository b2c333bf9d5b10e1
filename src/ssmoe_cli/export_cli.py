"""`ssmoe export`: write the sparse file of a run from its checkpoint, or describe an exported file.

    ssmoe export logs/train/runs/2026-11-23_19-08-20              # -> <run dir>/model.safetensors
    ssmoe export logs/train/runs/<dt> --output fcl95.safetensors
    ssmoe export --info model.safetensors                         # layers, sizes, preprocessing

`ssmoe train` already exports every run; this is for checkpoints written later (a resumed run) or
elsewhere. Nothing in the run folder can run code: the checkpoint is read as weights only, and the
model is built from the run's `config.yaml` by ssmoe's registry of model classes (never by Hydra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ssmoe_cli.errors import SsmoeError


def _run_config(config_file: Path) -> tuple[dict[str, Any], str | None]:
    """The run's model config (interpolations resolved) and its data module's class name."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        full = OmegaConf.load(config_file)
        model_config = OmegaConf.to_container(full.model, resolve=True)
        data_target = OmegaConf.select(full, "data._target_", default=None)
        quantized = OmegaConf.select(full, "quantize._target_", default=None)
    except (OSError, OmegaConfBaseException, ValueError) as exc:
        raise SsmoeError(f"cannot read {config_file}: {str(exc).splitlines()[0]}") from None
    if not isinstance(model_config, dict):
        raise SsmoeError(f"{config_file}: `model` is not a config")
    if quantized is not None:
        # Weight sharing runs after the last checkpoint, with the training data: the checkpoint holds
        # the weights before it, so a file written from it would not be the model the run tested.
        raise SsmoeError(
            f"{config_file.parent.parent} was quantised after training (quantize=...): its checkpoint holds the "
            "weights before quantisation; use the file the run wrote, model.safetensors in that folder"
        )
    return model_config, data_target if isinstance(data_target, str) else None


def export_run(run_dir: Path, output: Path | None) -> Path:
    from ssmoe_cli.checkpoint import load_checkpoint
    from ssmoe_cli.data.preprocessing import Preprocessing
    from ssmoe_cli.export import export_model
    from ssmoe_cli.models.registry import build

    config_file, ckpt = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    for needed in (config_file, ckpt):
        if not needed.is_file():
            raise SsmoeError(f"{needed} not found: give the output directory of an `ssmoe train` run")
    model_config, data_target = _run_config(config_file)
    try:
        model = build(model_config, where="model")
    except SsmoeError as exc:
        raise SsmoeError(f"refusing to export {run_dir}: {config_file}: {exc}") from None
    checkpoint = load_checkpoint(ckpt)
    state = checkpoint.get("state_dict", {})
    # The LightningModule holds the network as `.model`; its metrics' states are not the network's.
    try:
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    except RuntimeError as exc:
        raise SsmoeError(f"{ckpt} does not fit the model of {config_file}: {str(exc).splitlines()[0]}") from None
    # Lightning files the data module's state under its class name (data/base.py puts the
    # preprocessing there); checkpoints written before that have none.
    data_state = checkpoint.get(data_target.rpartition(".")[2], {}) if data_target else {}
    raw = data_state.get("preprocessing") if isinstance(data_state, dict) else None
    preprocessing = Preprocessing.from_json(raw) if isinstance(raw, str) else None
    path = output or run_dir / "model.safetensors"
    info = export_model(model, model_config, path, preprocessing)
    print(f"wrote {info.path} ({info.bytes:,} bytes; {info.csr_tensors} layers as CSR, {info.dense_tensors} dense)")
    if preprocessing is None:
        print("no preprocessing in this checkpoint (written by an older ssmoe): the file takes standardised inputs")
    return path


def describe(path: Path) -> None:
    from ssmoe_cli.export import read_export

    exported = read_export(path)
    shapes = {key: tuple(t.shape) for key, t in exported.tensors.items()}
    sizes = {key: t.numel() * t.element_size() for key, t in exported.tensors.items()}
    config = exported.model_config
    print(f"{path}: {path.stat().st_size:,} bytes, format {exported.format}")
    target = config.get("_target_", "?") if isinstance(config, dict) else "?"
    print(f"model: {target if isinstance(target, str) and target.isprintable() else repr(target)}")
    prep = exported.preprocessing
    if prep is None:
        print("preprocessing: none stored (older file): feed inputs standardised as in training")
    else:
        print(
            f"preprocessing: flatten to {prep.in_features} values, then (x - {prep.mean:.6g}) / {prep.std:.6g}"
            " (applied by load_model: feed the dataset's raw inputs)"
        )
        print(f"classes: {', '.join(f'{i}={name}' for i, name in enumerate(prep.class_names))}")
    for key, shape in exported.csr.items():
        nnz = shapes.get(f"{key}::values", (0,))[0]
        dense = 1
        for d in shape:
            dense *= d
        print(f"  {key:40} CSR {'x'.join(map(str, shape)):>14}  {nnz:>9,} nonzero ({1 - nnz / dense:.4f} sparse)")
    for key, meta in exported.quantized.items():
        dense = 1
        for d in meta["shape"]:
            dense *= d
        stored = sum(t for k, t in sizes.items() if k.startswith(f"{key}::"))
        print(
            f"  {key:40} shared {'x'.join(map(str, meta['shape'])):>11}  {meta['nonzero']:>9,} nonzero "
            f"({1 - meta['nonzero'] / max(dense, 1):.4f} sparse), 2^{meta['bits']} values, "
            f"{meta['index_bits']}-bit indices, {meta['entropy']} coded: {stored:,} bytes"
        )
    for key, shape in shapes.items():
        if "::" not in key:
            print(f"  {key:40} dense {'x'.join(map(str, shape)):>12}")


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ssmoe export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help="a run's output directory, or with --info an exported file")
    parser.add_argument("-o", "--output", type=Path, help="where to write (default: <run dir>/model.safetensors)")
    parser.add_argument("--info", action="store_true", help="describe an exported file instead")
    opts = parser.parse_args(args)
    try:
        if opts.info:
            describe(opts.target)
        else:
            export_run(opts.target, opts.output)
    except SsmoeError as exc:
        print(f"ssmoe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
