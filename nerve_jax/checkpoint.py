"""Orbax checkpoints in the workdir: the latest N and the best by validation Dice.

Orbax writes a checkpoint into a temporary folder and renames it when complete, so a process
killed mid-save leaves no checkpoint under that step. A checkpoint that is there but cannot be
read (a truncated file) is skipped by `restore_latest`, which says so and falls back to the one
before; it never starts again from step 0 while checkpoints exist.
"""

from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from nerve_jax import fileio, runtime
from nerve_jax.errors import UserError

BEST_METRIC = "val_dice"


def manager(workdir: str, keep_latest: int = 2, read_only: bool = False,
            asynchronous: bool = True) -> ocp.CheckpointManager:
    """CheckpointManager under `workdir/checkpoints` keeping the latest `keep_latest` steps plus
    the step with the highest validation Dice; saves write in the background unless
    `asynchronous` is False (benchmarks/save_stall.py compares the two)."""
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
        enable_async_checkpointing=asynchronous,
    )
    return ocp.CheckpointManager(fileio.join(fileio.absolute(workdir), "checkpoints"),
                                 options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, val_dice: float | None) -> None:
    """Saves `step` (asynchronously: orbax writes while training goes on). Without `val_dice`
    it is one of the latest N only, never the best. A failing write (disk full, no permission)
    raises UserError; the checkpoints before it are untouched."""
    metrics = None if val_dice is None else {BEST_METRIC: float(val_dice)}
    try:
        mngr.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
    except OSError as e:
        raise UserError(f"saving checkpoint step {step} in {mngr.directory} failed ({e}); the "
                        "checkpoints before it are untouched") from None


def wait(mngr: ocp.CheckpointManager) -> None:
    """Waits for the asynchronous saves; UserError if one failed."""
    try:
        mngr.wait_until_finished()
    except OSError as e:
        raise UserError(f"saving a checkpoint in {mngr.directory} failed ({e}); the "
                        "checkpoints before it are untouched") from None


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any) -> tuple[int, Any]:
    """(step, state) of the newest checkpoint that restores, or (0, None) without any. An
    unreadable newer one is skipped with a warning naming its step, and deleted so that
    training can save that step again; UserError when none restores."""
    steps = sorted(mngr.all_steps(), reverse=True)
    for step in steps:
        try:
            state = restore(mngr, step, abstract_state)
        except Exception as e:  # Whatever a damaged file makes orbax or TensorStore raise.
            runtime.logger().warning(
                "checkpoint step %d in %s cannot be restored (%s: %s); trying an older one",
                step, mngr.directory, type(e).__name__, str(e).splitlines()[0][:200])
            continue
        for newer in steps[:steps.index(step)]:
            mngr.delete(newer)
        return step, state
    if steps:
        raise UserError(f"{mngr.directory}: none of the checkpoints {sorted(steps)} can be "
                        "restored (see the warnings above); move the folder away to start again")
    return 0, None


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Restores `step` with the shapes, dtypes and shardings of `abstract_state`, so a checkpoint
    written on one device count restores onto another."""
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
