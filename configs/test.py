"""Tiny settings for the test suite: 32x48 inputs, a 2-level UNet with 4 base features."""

from configs import default


def get_config():
    config = default.get_config()
    config.image_size = (32, 48)
    config.num_folds = 2
    config.model.depth = 2
    config.model.base_features = 4
    config.batch_size = 8
    config.eval_batch_size = 8
    config.learning_rate = 1e-2
    config.lr_schedule = "constant"
    config.warmup_steps = 0
    config.dice_smooth = 1.0
    config.augment.enabled = False  # Tests that augment switch it on; the goldens train without.
    config.num_train_steps = 3
    config.log_every_steps = 1
    config.eval_every_steps = 1000
    return config
