"""Full-size training on the real Kaggle data (set --config.kaggle_dir=DIR)."""

import ml_collections

from nerve_jax.data import duplicates


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Data.
    config.kaggle_dir = ""  # Folder in Kaggle layout: train/, test/.
    # Prepared TFDS records; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets, as for `nerve-jax build`
    # (nerve_jax/data/tfds_builder.py, data_dir).
    config.tfds_data_dir = ""
    config.image_size = (128, 176)  # (rows, cols) fed to the model; 420x580 is ~ 0.72 aspect.
    config.num_folds = 5  # Validation = one fold of subjects.
    config.fold = 0
    config.split_seed = 0
    # Empty-mask members of near-duplicate pairs whose twin has a nerve (label noise, see
    # nerve_jax/data/duplicates.py), in the training subjects only: "keep", "drop" or
    # "relabel" (with the closest twin's mask).
    config.clean = "keep"
    config.duplicate_threshold = duplicates.DEFAULT_THRESHOLD
    # Training augmentation at model resolution, after the cache (nerve_jax/data/augment.py):
    # one affine per example moves image and mask together; brightness, contrast and gamma
    # touch the image only. ± fields are off at 0, (min, max) fields at (1.0, 1.0).
    config.augment = ml_collections.ConfigDict()
    # Master switch. On: +0.073 Kaggle Dice on real frames (docs/ablation.md, out of fold over
    # 27 subjects), the largest single change measured there.
    config.augment.enabled = True
    config.augment.shift = 0.05  # ± fraction of height and width (~±9 px at 128x176).
    config.augment.rotation = 5.0  # ± degrees.
    config.augment.zoom = (0.9, 1.1)  # (min, max) scale; > 1 enlarges.
    # Left-right flip probability. Off: real nerves sit right of centre (docs/data.md: centroid
    # columns 267-399 of 580), so a flip shows the model positions it never meets in the test.
    config.augment.flip = 0.0
    config.augment.brightness = 0.05  # ± offset added to the [0, 1] image.
    config.augment.contrast = (0.9, 1.1)  # (min, max) factor around each image's mean.
    config.augment.gamma = (0.9, 1.1)  # (min, max) exponent of the [0, 1] image.
    config.augment.fill_mode = "reflect"  # Outside the frame: "reflect", "nearest", "constant".

    # Model: a registered name ("unet") or "package.module:Class", built with the other
    # config.model fields as keyword arguments (docs/extending.md).
    config.model = ml_collections.ConfigDict()
    config.model.name = "unet"
    config.model.depth = 4
    config.model.base_features = 32
    config.model.upsample = "pixel_shuffle"  # or "transpose" (same function class).
    config.model.norm = "batch"  # Synchronised BatchNorm after each conv, or "none".
    # Inputs are [0, 1] grey levels; the model first computes (x - input_mean) / input_std.
    config.model.input_mean = 0.0
    config.model.input_std = 1.0
    config.model.dtype = "float32"
    # A "nerve present" logit from the bottleneck, trained with BCE; at prediction a frame whose
    # presence probability is below presence_threshold gets an empty mask.
    config.model.presence_head = False

    # Optimisation.
    config.batch_size = 32  # Global, over all devices and hosts.
    config.eval_batch_size = 32
    # Loss: "soft_dice", "soft_dice+bce", "batch_dice" (configs/starter.py) or
    # "package.module:function" (outputs, batch) -> [B].
    # Its keyword-only parameters come from the config fields of the same name (dice_smooth,
    # pixel_bce_weight) and from loss_args; presence_weight x presence BCE is added whenever
    # the model has a presence head.
    config.loss = "soft_dice+bce"
    config.loss_args = ml_collections.ConfigDict()
    # On-device transform of each training batch before the forward pass: "" (none) or
    # "package.module:function" (batch, rng) -> batch, with batch_transform_args.
    config.batch_transform = ""
    config.batch_transform_args = ml_collections.ConfigDict()
    # Soft Dice smoothing, in pixels at model resolution: of the order of a nerve's area, so
    # that frames without a nerve keep a useful gradient against false positives.
    config.dice_smooth = 100.0
    config.presence_weight = 1.0  # x presence BCE (with model.presence_head).
    # x per-pixel BCE, added to the soft Dice. 0.5 lost 0.021 Kaggle Dice on real frames
    # (docs/ablation.md).
    config.pixel_bce_weight = 0.0
    config.optimizer = "adamw"  # or "sgd" (Nesterov momentum 0.9).
    config.learning_rate = 1e-3
    config.lr_schedule = "cosine"  # or "constant"; both after a linear warmup.
    config.warmup_steps = 200
    config.weight_decay = 1e-4
    config.num_epochs = 40.0
    config.num_train_steps = -1  # > 0 overrides num_epochs.
    config.seed = 0
    config.parallel = "shard_map"  # or "pmap".

    # Prediction (full resolution).
    config.threshold = 0.5  # Pixel probability threshold.
    config.presence_threshold = 0.5  # With model.presence_head.
    # Masks with fewer pixels (at 420x580) are emptied; a false positive zeroes a frame's score.
    config.min_mask_area = 0
    # Host-side shape steps at 420x580 (nerve_jax/postprocess.py; `nerve-jax tune` searches
    # them with the thresholds above on held-out predictions and writes <workdir>/
    # postprocess.json, which evaluate and predict then use instead of these values).
    config.min_component_area = 0  # Connected components with fewer pixels are dropped.
    config.largest_component_only = False  # Every real mask is one connected component.
    config.fill_holes = False
    config.ellipse_fit = False  # Replace each component by its fitted ellipse.
    # Test-time augmentation in evaluate, predict and the held-out predictions: "none", or
    # "hflip" (average with the prediction of the mirrored image, mirrored back).
    config.tta = "none"

    # Metrics averaged over the validation frames next to the Kaggle Dice, as val_<name>:
    # registered names ("iou", "presence_accuracy") or "package.module:function".
    config.metrics = ("iou", "presence_accuracy")

    # Bookkeeping.
    config.log_every_steps = 50
    config.eval_every_steps = 500
    # Stop after this many evaluations without a better validation Dice (0: never); the best
    # checkpoint is the one evaluate and predict use.
    config.early_stopping_patience = 0
    # Checkpoints besides those at evaluations (the latest checkpoints_to_keep are kept, and the
    # best by validation Dice apart from them): every N steps and/or every M minutes (0: off),
    # so that a preempted or killed run loses little. Saves are asynchronous.
    config.checkpoints_to_keep = 2
    config.checkpoint_every_steps = 0
    config.checkpoint_every_minutes = 10.0
    # A non-finite loss or gradient stops training (its update is never applied, nothing is
    # saved); N > 0 skips up to N such steps in a row instead. Off by default: on this task a
    # NaN means a bug, bad data or too high a learning rate, and skipping would hide it.
    config.skip_nonfinite_steps = 0
    return config
