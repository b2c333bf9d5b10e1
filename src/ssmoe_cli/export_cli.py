"""`ssmoe export`: write the sparse file of a run from its checkpoint, or describe an exported file.

    ssmoe export logs/train/runs/2026-11-23_19-08-20              # -> <run dir>/model.safetensors
    ssmoe export logs/train/runs/<dt> --output fcl95.safetensors
    ssmoe export --info model.safetensors                         # layers, sizes, format

`ssmoe train` already exports every run; this is for checkpoints written later (a resumed run) or
elsewhere. The checkpoint is read with weights_only=True (no pickled code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssmoe_cli.errors import SsmoeError


def export_run(run_dir: Path, output: Path | None) -> Path:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ssmoe_cli.checkpoint import load_checkpoint
    from ssmoe_cli.export import export_model

    config_file, ckpt = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    for needed in (config_file, ckpt):
        if not needed.is_file():
            raise SsmoeError(f"{needed} not found: give the output directory of an `ssmoe train` run")
    full = OmegaConf.load(config_file)
    model_config = OmegaConf.to_container(full.model, resolve=True)
    model = instantiate(model_config)
    state = load_checkpoint(ckpt).get("state_dict", {})
    # The LightningModule holds the network as `.model`; its metrics' states are not the network's.
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    path = output or run_dir / "model.safetensors"
    info = export_model(model, model_config, path)
    print(f"wrote {info.path} ({info.bytes:,} bytes; {info.csr_tensors} layers as CSR, {info.dense_tensors} dense)")
    return path


def describe(path: Path) -> None:
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for a bad file
        raise SsmoeError(f"cannot read {path}: {exc}") from None
    csr = json.loads(meta.get("csr", "{}"))
    print(f"{path}: {path.stat().st_size:,} bytes, format {meta.get('format', '?')}")
    print(f"model: {json.loads(meta.get('model_config', '{}')).get('_target_', '?')}")
    for key, shape in csr.items():
        nnz = shapes.get(f"{key}::values", (0,))[0]
        dense = 1
        for d in shape:
            dense *= d
        print(f"  {key:40} CSR {'x'.join(map(str, shape)):>14}  {nnz:>9,} nonzero ({1 - nnz / dense:.4f} sparse)")
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
