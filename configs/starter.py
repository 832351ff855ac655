"""The classic starter, reproduced inside nerve-jax: the Keras U-Net most people began this
competition with (jocicmarko/ultrasound-nerve-segmentation), as a baseline row that runs
through the same data, split, evaluation and submission path as every other config.

Its recipe: 96x96 inputs (the 420x580 frame squeezed, aspect not kept), 32 base features,
depth 4 (512 at the bottleneck), 3x3 convolutions with ReLU and no BatchNorm, 2x2 stride-2
transposed convolutions up, a 1x1 sigmoid output; loss minus the Dice of the whole batch with
smooth 1; Adam at 1e-5 (no weight decay, no schedule), batch 32, 20 epochs; inputs standardised
by the training set's mean and standard deviation; masks at threshold 0.5, no post-processing.

The training set's statistics are fixed here to those of the Kaggle training frames (mean grey
level 94.5, standard deviation 58.2 of 255: docs/data.md), where the starter computed them from
its own training part. Its learning rate undertrains on fewer frames:
`--config.learning_rate=1e-4` (or 1e-3) gives the starter its best chance (docs/ablation.md).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.image_size = (96, 96)
    config.model.depth = 4
    config.model.base_features = 32
    config.model.upsample = "transpose"
    config.model.norm = "none"
    config.model.presence_head = False
    config.model.input_mean = 94.5 / 255
    config.model.input_std = 58.2 / 255
    config.loss = "batch_dice"
    config.dice_smooth = 1.0
    config.pixel_bce_weight = 0.0
    config.optimizer = "adamw"
    config.weight_decay = 0.0  # Adam.
    config.learning_rate = 1e-5
    config.lr_schedule = "constant"
    config.warmup_steps = 0
    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_epochs = 20.0
    config.num_train_steps = -1
    config.augment.enabled = False
    config.clean = "keep"
    config.threshold = 0.5
    config.min_mask_area = 0
    config.tta = "none"
    return config
