"""The runs whose results tests/golden/*.npz hold (tests/golden/record.py writes them)."""

import json
import os

import jax
import numpy as np

CASES = ("default", "presence_all_terms")
STEPS = 3


def config_for(case: str, kaggle_dir: str, tfds_dir: str):
    from nerve_jax import config_util

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_util.load_config_file(os.path.join(repo, "configs", "test.py"))
    config.kaggle_dir, config.tfds_data_dir = kaggle_dir, tfds_dir
    config.num_train_steps, config.eval_every_steps = STEPS, 1
    if case == "presence_all_terms":
        config.model.presence_head = True
        config.presence_weight, config.pixel_bce_weight = 1.0, 0.5
    return config


def _flat(prefix: str, tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    return {f"{prefix}/{jax.tree_util.keystr(path)}": np.asarray(leaf) for path, leaf in leaves}


def run(case: str, kaggle_dir: str, workdir: str) -> dict[str, np.ndarray]:
    """Trains `case` in `workdir`; its parameters, batch statistics, per-step train loss and
    validation Dice."""
    from nerve_jax import train

    config = config_for(case, kaggle_dir, os.path.join(workdir, "tfds"))
    result = train.train_and_evaluate(config, os.path.join(workdir, "work"))
    records = [json.loads(line) for line in open(os.path.join(workdir, "work", "metrics.jsonl"))]
    return {
        "train_loss": np.array([r["train_loss"] for r in records if "train_loss" in r]),
        "val_dice": np.array([r["val_dice"] for r in records if "val_dice" in r]),
        **_flat("params", result.state.params),
        **_flat("batch_stats", result.state.batch_stats),
    }
