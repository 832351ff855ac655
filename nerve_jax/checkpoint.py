"""Orbax checkpoints in the workdir: the latest N and the best by validation Dice."""

import os
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

BEST_METRIC = "val_dice"


def manager(workdir: str, keep_latest: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    """CheckpointManager under `workdir/checkpoints` keeping the latest `keep_latest` steps plus
    the step with the highest validation Dice."""
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(keep_latest),
        pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda m: m[BEST_METRIC],
        best_mode="max",
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, val_dice: float | None) -> None:
    metrics = None if val_dice is None else {BEST_METRIC: float(val_dice)}
    mngr.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Restores `step` with the shapes, dtypes and shardings of `abstract_state`, so a checkpoint
    written on one device count restores onto another."""
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
