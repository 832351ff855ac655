"""The CPU recipe for the real data (--config.kaggle_dir=DIR): the best system the real-frame
ablation found (docs/ablation.md#real-frames), for a machine without an accelerator.

A UNet of depth 4 with 12 base features at 96x128, augmentation on, 1,600 steps of 16 frames
with a cosine schedule from 3e-3, evaluated every 200 steps so that the best of 8 checkpoints
(by validation Dice) is the one evaluate, tune and predict use; then `nerve-jax tune`. The
budget is steps, so the training time does not grow with the number of frames: ~2.5 steps/s on
2 CPU cores, about 11 minutes of training plus 8 evaluations, well under an hour with the
TFDS build, tune and prediction of the 5,508 test images (docs/ablation.md gives the measured
times).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.image_size = (96, 128)
    config.model.depth = 4
    config.model.base_features = 12
    config.augment.enabled = True
    config.batch_size = 16
    config.eval_batch_size = 32
    config.learning_rate = 3e-3
    config.lr_schedule = "cosine"
    config.warmup_steps = 20
    config.num_train_steps = 1600
    config.eval_every_steps = 200
    config.log_every_steps = 50
    return config
