"""PyTorch reference for benchmarks/train_throughput.py: the same UNet and train step, eager.

  .venv/bin/python benchmarks/torch_reference.py [--height 128 --width 160 --batch 16
      --features 32 --depth 4 --steps 20 --warmup 2 --upsample pixel_shuffle
      --channels-last | --no-channels-last --threads N]

Needs the optional extra `bench` (torch==2.13.0, CPU build).

Network, as nerve_jax.models.unet.UNet: `depth` levels of (3x3 conv without bias, pad 1 ->
BatchNorm (momentum 0.1 = flax's 0.9, eps 1e-5) -> ReLU) x 2 then a 2x2 max-pool, features
base * 2**level; a bottleneck block at base * 2**depth; per decoder level an upsample
('transpose': 2x2 stride-2 ConvTranspose2d with bias; 'pixel_shuffle': 1x1 Conv2d with bias to
4x the channels then PixelShuffle(2)), concatenation with the skip, a block; a final 1x1 conv
(with bias) to one logit channel. The parameter count equals the Flax model's for each upsample
kind (BatchNorm running statistics excluded on both sides).

Train step: zero_grad, forward (BatchNorm in training mode), per-example soft Dice loss on
sigmoid(logits) summed over H and W, 1 - (I + 1) / (0.5 P + 0.5 T + 1) (optax's
binary_dice_loss, smooth 1), mean over the batch, backward, torch.optim.Adam(lr=1e-3) step.
Each timed step runs all of that after `--warmup` untimed steps; the median is reported.

PyTorch eager has no compilation: `compile_s` is the wall time of the FIRST train step (lazy
allocation, oneDNN primitive creation), reported under the JAX benchmark's name for
comparison. `gflop_per_image` is from torch.utils.flop_counter.FlopCounterMode on one full train
step (when it works); `gflop_per_image_analytic` is always given: 2 x MACs of every forward
conv/transposed conv, x3 for a train step (forward + input gradients + weight gradients).

The last output line is one JSON object (framework "torch").
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import common  # noqa: E402

UPSAMPLE_CHOICES = ("pixel_shuffle", "transpose")
# channels_last (NHWC) was the faster memory format on the 2-core AMD EPYC (Zen 4) dev machine,
# torch 2.13.0 CPU, 128x160, batch 16, 32 features, depth 4, machine idle: median step 2.51 s
# vs 3.18-3.36 s contiguous (NCHW) with pixel_shuffle (+27-34% images/s), 2.78 s vs 3.34 s with
# transpose (+20%). Under CPU contention from other jobs both slow to 7-10 s (noisy).
DEFAULT_CHANNELS_LAST = True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common.add_step_flags(p)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   default=DEFAULT_CHANNELS_LAST,
                   help="torch.channels_last (NHWC) memory format for model and input "
                        f"(default: {DEFAULT_CHANNELS_LAST}, the faster one on the dev CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: every core this process may use)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class ConvBlock(nn.Sequential):
    """(3x3 conv without bias -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_channels: int, features: int):
        layers = []
        for i in range(2):
            layers += [
                nn.Conv2d(in_channels if i == 0 else features, features, 3, padding=1,
                          bias=False),
                nn.BatchNorm2d(features, eps=1e-5, momentum=0.1),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


def upsample(in_channels: int, features: int, kind: str) -> nn.Module:
    """2x learned upsampling, as nerve_jax.models.unet.Upsample."""
    if kind == "transpose":
        return nn.ConvTranspose2d(in_channels, features, 2, stride=2, bias=True)
    if kind == "pixel_shuffle":
        return nn.Sequential(nn.Conv2d(in_channels, 4 * features, 1, bias=True),
                             nn.PixelShuffle(2))
    raise ValueError(f"unknown upsample {kind!r}; choose one of {UPSAMPLE_CHOICES}")


class UNet(nn.Module):
    """Input [B, 1, H, W] float32 (H, W divisible by 2**depth) -> logits [B, 1, H, W]."""

    def __init__(self, depth: int = 4, base_features: int = 32,
                 upsample_kind: str = "pixel_shuffle", in_channels: int = 1):
        super().__init__()
        self.depth = depth
        self.encoder = nn.ModuleList()
        channels = in_channels
        for level in range(depth):
            features = base_features * 2**level
            self.encoder.append(ConvBlock(channels, features))
            channels = features
        self.pool = nn.MaxPool2d(2, 2)
        self.bottleneck = ConvBlock(channels, base_features * 2**depth)
        channels = base_features * 2**depth
        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(depth)):
            features = base_features * 2**level
            self.upsamples.append(upsample(channels, features, upsample_kind))
            self.decoder.append(ConvBlock(2 * features, features))
            channels = features
        self.head = nn.Conv2d(channels, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.upsamples, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0):
    """Per-example soft Dice loss, as optax.losses.binary_dice_loss: logits, masks [B, 1, H, W]
    -> [B]. Sums over C, H, W of sigmoid(logits); 1 - (I + s) / (0.5 P + 0.5 T + s)."""
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.dim()))
    intersection = (probs * masks).sum(dims)
    denominator = 0.5 * probs.sum(dims) + 0.5 * masks.sum(dims) + smooth
    return 1.0 - (intersection + smooth) / denominator


def num_params(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def analytic_forward_flops(height: int, width: int, depth: int, base_features: int,
                           upsample_kind: str, in_channels: int = 1) -> int:
    """Forward FLOPs (2 x multiply-adds) of the conv / transposed-conv layers for ONE image.

    Transposed 2x2 stride-2 conv and 1x1 conv to 4x channels + pixel shuffle cost the same:
    2 * h_in * w_in * c_in * c_out * 4. Pooling, BatchNorm, ReLU, loss are not counted.
    """
    del upsample_kind  # Both kinds have the same multiply-add count.

    def conv(h, w, cin, cout, k):
        return 2 * h * w * cin * cout * k * k

    flops = 0
    h, w, channels = height, width, in_channels
    for level in range(depth):
        features = base_features * 2**level
        flops += conv(h, w, channels, features, 3) + conv(h, w, features, features, 3)
        channels = features
        h, w = h // 2, w // 2
    features = base_features * 2**depth
    flops += conv(h, w, channels, features, 3) + conv(h, w, features, features, 3)
    channels = features
    for level in reversed(range(depth)):
        features = base_features * 2**level
        flops += conv(h, w, channels, 4 * features, 1)  # Upsample, at the input resolution.
        h, w = h * 2, w * 2
        flops += conv(h, w, 2 * features, features, 3) + conv(h, w, features, features, 3)
        channels = features
    flops += conv(h, w, channels, 1, 1)
    return flops


def synthetic_batch(batch: int, height: int, width: int, seed: int = 0):
    """The same data as train_throughput.synthetic_batch, as NCHW tensors."""
    rng = np.random.default_rng(seed)
    image = rng.random((batch, 1, height, width), dtype=np.float32)
    mask = np.zeros((batch, 1, height, width), np.float32)
    mask[:, :, height // 3: height // 2, width // 2: 3 * width // 4] = 1.0
    return torch.from_numpy(image), torch.from_numpy(mask)


def make_train_step(model, optimizer, image, mask):
    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        logits = model(image)
        loss = soft_dice_loss(logits, mask).mean()
        loss.backward()
        optimizer.step()
        return loss.item()  # Synchronous on CPU; .item() only reads the scalar.

    return step


def counted_train_flops(step) -> float | None:
    """FLOPs of one train step by FlopCounterMode (convs, matmuls and their gradients)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        return float(counter.get_total_flops())
    except Exception as e:  # noqa: BLE001 - the count is optional.
        print(f"FlopCounterMode failed: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def main(argv=None) -> dict:
    args = parse_args(argv)
    factor = 2**args.depth
    if args.height % factor or args.width % factor:
        raise SystemExit(f"--height/--width must be divisible by 2**depth = {factor}")
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    model = UNet(args.depth, args.features, args.upsample).to(memory_format=memory_format)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    image, mask = synthetic_batch(args.batch, args.height, args.width, args.seed)
    image = image.contiguous(memory_format=memory_format)
    mask = mask.contiguous(memory_format=memory_format)
    step = make_train_step(model, optimizer, image, mask)

    losses = []
    start = time.perf_counter()
    losses.append(step())
    first_step_s = time.perf_counter() - start
    flops_counted = counted_train_flops(step)  # One extra, untimed step.
    for _ in range(args.warmup):
        losses.append(step())

    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)

    step_s = common.median(times)
    images_per_s = args.batch / step_s
    peak = common.cpu_peak_gflops()
    analytic = 3 * analytic_forward_flops(args.height, args.width, args.depth, args.features,
                                          args.upsample) / 1e9
    gflop_per_image = analytic if flops_counted is None else flops_counted / 1e9 / args.batch
    achieved = gflop_per_image * args.batch / step_s
    record = {
        "framework": "torch", "torch": torch.__version__, "threads": threads,
        "channels_last": args.channels_last,
        "memory_format": "channels_last" if args.channels_last else "contiguous",
        "height": args.height, "width": args.width, "batch": args.batch,
        "features": args.features, "depth": args.depth, "upsample": args.upsample,
        "dtype": "float32", "steps": args.steps, "warmup": args.warmup,
        "params": num_params(model),
        "step_s_median": step_s, "step_s_min": min(times), "images_per_s": images_per_s,
        "compile_s": first_step_s,
        "compile_s_note": "PyTorch eager has no compilation: wall time of the first train step",
        "gflop_per_image": gflop_per_image,
        "gflop_per_image_source": "analytic" if flops_counted is None else "FlopCounterMode",
        "gflop_per_image_counted": (None if flops_counted is None
                                    else flops_counted / 1e9 / args.batch),
        "gflop_per_image_analytic": analytic,
        "achieved_gflops": achieved, "cpu_peak_gflops": peak, "mfu": achieved / peak,
        "loss_first": losses[0], "loss_last": losses[-1],
    }
    print(f"torch {torch.__version__}, {threads} threads, "
          f"{record['memory_format']} memory format")
    print(f"train step: median {step_s * 1e3:.1f} ms, {images_per_s:.1f} images/s "
          f"(first step {first_step_s:.2f} s, eager: no compilation)")
    counted = ("n/a" if flops_counted is None
               else f"{record['gflop_per_image_counted']:.2f}")
    print(f"  {gflop_per_image:.2f} GFLOP/image (FlopCounterMode {counted}, analytic "
          f"{analytic:.2f}), {achieved:.1f} GFLOP/s = {100 * record['mfu']:.1f}% of "
          f"{peak:.1f} GFLOP/s FP32 peak")
    record["peak_rss_mb"] = common.peak_rss_mb()
    common.print_json(record)
    return record


if __name__ == "__main__":
    main()
