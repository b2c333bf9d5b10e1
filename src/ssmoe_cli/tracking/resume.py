"""Skip and resume policy: what a job does when the store already holds runs of its very config.

`skip_finished=true`: a FINISHED run with the same config hash means the job is not trained again.
`ckpt_path=last`: the newest unfinished run of the same config that left checkpoints/last.ckpt is
continued, into the same MLflow run. Both only query the tracker (find_finished / find_unfinished).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.tracking.base import Tracker


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    run_id: str | None  # the MLflow run it belongs to, if known
    output_dir: str | None = None  # the run's output directory that holds it


def finished_run(tracker: Tracker, config_hash: str) -> tuple[str, dict[str, float]] | None:
    """skip_finished: (run id, metrics) of a FINISHED run of this config, or None to train."""
    return tracker.find_finished(config_hash)


def resolve_checkpoint(ckpt_path: str | None, tracker: Tracker, config_hash: str) -> Checkpoint | None:
    """`ckpt_path=last`: the newest checkpoints/last.ckpt of the newest unfinished run of this very config
    (a run resumed and stopped again has two candidate folders: the newer file wins); a path: that
    checkpoint (and the run whose output directory holds it, if any)."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        for run_id, out_dirs in tracker.find_unfinished(config_hash):
            found = [(Path(d) / "checkpoints" / "last.ckpt", d) for d in out_dirs]
            found = [(path, d) for path, d in found if path.is_file()]
            if found:
                path, out_dir = max(found, key=lambda hit: hit[0].stat().st_mtime)
                return Checkpoint(path, run_id, out_dir)
        raise SsmoeError(
            "ckpt_path=last: no unfinished run of this config left a checkpoint in this experiment; "
            "run without ckpt_path, or give ckpt_path=PATH/TO/last.ckpt"
        )
    path = Path(ckpt_path).expanduser().resolve()
    if not path.is_file():
        raise SsmoeError(f"ckpt_path={ckpt_path}: no such file; give a checkpoint file or ckpt_path=last")
    for run_id, out_dirs in tracker.find_unfinished(config_hash):
        for out_dir in out_dirs:
            if path.is_relative_to(Path(out_dir).resolve()):
                return Checkpoint(path, run_id, out_dir)
    return Checkpoint(path, None)


def resume_tags(checkpoint: Checkpoint, output_dir: str) -> dict[str, str]:
    """Tags a resumed run gets: this process's output directory (where its next checkpoints go) and
    the one it resumed from; together they hold the run's newest checkpoint whenever it stops again."""
    tags = {"output_dir": output_dir}
    if checkpoint.output_dir:
        tags["previous_output_dir"] = checkpoint.output_dir
    return tags
