"""JAX (benchmarks/train_throughput.py) vs PyTorch (benchmarks/torch_reference.py) train-step
throughput on the same UNet, in one invocation:

  .venv/bin/python benchmarks/compare_torch.py --rounds 3

  [--height 128 --width 160 --batch 16 --features 32 --depth 4 --steps 20 --warmup 2
   --upsample pixel_shuffle --jax-args "--parallel shard_map" --torch-args "--no-channels-last"]
  [--jax-defaults: each round also times JAX without nerve-jax's CPU settings]
  [--torch-huge-pages: each round also times PyTorch with GLIBC_TUNABLES=glibc.malloc.hugetlb=1]
  [--convs: then times the UNet's convolutions alone (conv_speed.py --unet) in both frameworks
   and splits each median step into convolutions and the rest]

Needs the optional extra `bench` (torch). Rounds ALTERNATE: in each round the JAX benchmark runs
as a subprocess, then the PyTorch one, with the same shape flags; so slow drift of a shared
machine's load hits both frameworks alike. Each subprocess gets this environment minus the
thread-count variables (OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS, ...) and minus
any --xla_force_host_platform_device_count in XLA_FLAGS, with TF_CPP_MIN_LOG_LEVEL=2: each
framework picks its own threading (JAX: its default CPU device; PyTorch: one thread per core
this process may use).

Prints a table of per-framework medians over rounds (images/s, step ms, compile s -- for
PyTorch the first-step time, eager has no compilation --, GFLOP/image, MFU, peak RSS) and the
JAX/PyTorch images/s ratio (median of per-round ratios, min-max); the last line is one JSON
object with all of it, including every round's records.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
JAX_SCRIPT = os.path.join(BENCH_DIR, "train_throughput.py")
TORCH_SCRIPT = os.path.join(BENCH_DIR, "torch_reference.py")
CONV_SCRIPT = os.path.join(BENCH_DIR, "conv_speed.py")
CONV_SHAPE_FLAGS = ("height", "width", "batch", "features", "depth")
CONV_REPEATS = 5
# conv_speed.py's column for each framework.
CONV_COLUMNS = {"jax": "xla", "torch": "torch"}
SHARED_FLAGS = ("height", "width", "batch", "features", "depth", "steps", "warmup", "upsample")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "TF_NUM_INTEROP_THREADS")
FRAMEWORKS = ("jax", "torch")
HUGE_PAGES = "glibc.malloc.hugetlb=1"  # nerve_jax.runtime.host_malloc.TUNABLE; importing the
# package here would put nerve-jax's XLA_FLAGS into the environment the subprocesses inherit.
# JAX without the CPU settings of nerve-jax (the XLA:CPU flags of
# nerve_jax/runtime/xla_flags.py, the huge pages of nerve_jax/runtime/host_malloc.py).
XLA_DEFAULTS = "jax_xla_defaults"
JAX_DEFAULTS_ENV = {"NERVE_JAX_XLA_CPU_FLAGS": "0", "NERVE_JAX_HUGE_PAGES": "0"}
# PyTorch with the huge pages nerve-jax gives itself.
TORCH_HUGE_PAGES = "torch_huge_pages"
LABELS = {"jax": "JAX", "torch": "PyTorch", XLA_DEFAULTS: "JAX, defaults",
          TORCH_HUGE_PAGES: "PyTorch, huge pages"}
RATIO_KEYS = {"jax": "ratio_images_per_s", XLA_DEFAULTS: "ratio_xla_defaults_images_per_s",
              TORCH_HUGE_PAGES: "ratio_torch_huge_pages_images_per_s"}
# (record key, table label, scale, format)
ROWS = (
    ("images_per_s", "images/s", 1.0, "{:.2f}"),
    ("step_s_median", "step ms (median)", 1e3, "{:.0f}"),
    ("step_s_min", "step ms (min)", 1e3, "{:.0f}"),
    ("compile_s", "compile s (torch: 1st step)", 1.0, "{:.2f}"),
    ("gflop_per_image", "GFLOP/image", 1.0, "{:.2f}"),
    ("mfu", "MFU %", 100.0, "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", 1.0, "{:.0f}"),
)
# With --convs, for the JAX and PyTorch columns only.
CONV_ROWS = (
    ("convolutions_s", "convolutions alone ms", 1e3, "{:.0f}"),
    ("rest_s", "rest of step ms", 1e3, "{:.0f}"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    common.add_step_flags(p)
    p.add_argument("--jax-args", default="", help="extra flags for train_throughput.py only")
    p.add_argument("--torch-args", default="", help="extra flags for torch_reference.py only")
    p.add_argument("--jax-defaults", action="store_true",
                   help="each round also runs JAX with NERVE_JAX_XLA_CPU_FLAGS=0 and "
                        "NERVE_JAX_HUGE_PAGES=0 (XLA's and glibc's defaults)")
    p.add_argument("--torch-huge-pages", action="store_true",
                   help="each round also runs PyTorch with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, "
                        "as nerve-jax runs (nerve_jax/runtime/host_malloc.py)")
    p.add_argument("--convs", action="store_true",
                   help="after the rounds, time every convolution of the UNet alone "
                        f"(conv_speed.py --unet --repeats {CONV_REPEATS}) in both frameworks; "
                        "the table then splits each median step into convolutions and the rest")
    args = p.parse_args(argv)
    if args.convs and args.upsample != "pixel_shuffle":
        p.error("--convs times the pixel_shuffle UNet's convolutions; "
                f"it cannot split steps of --upsample {args.upsample}")
    return args


def clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(extra or {})
    xla = [f for f in env.pop("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
    if xla:
        env["XLA_FLAGS"] = " ".join(xla)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def run_benchmark(script: str, flags: list[str], extra_env: dict | None = None) -> dict:
    """Runs one benchmark script; returns the JSON object on its last non-empty stdout line."""
    cmd = [sys.executable, script, *flags]
    prefix = "".join(f"{k}={v} " for k, v in (extra_env or {}).items())
    print("$ " + prefix + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(extra_env), capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    for line in lines[:-1]:
        print("  " + line, flush=True)
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{os.path.basename(script)} failed with exit status {proc.returncode}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{os.path.basename(script)}: last line is not JSON: "
                         f"{lines[-1][:200]!r}") from None


def median_of(records: list[dict], key: str):
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(values) if values else None


def split_steps(summary: dict, conv_totals: dict) -> None:
    """Adds convolutions_s (conv_speed.py --unet, forward + backward) and rest_s (median step
    minus that) to the JAX and PyTorch medians of `summary`."""
    for framework, column in CONV_COLUMNS.items():
        convs = conv_totals[f"{column}_forward_s"] + conv_totals[f"{column}_backward_s"]
        median = summary[framework]["median"]
        median["convolutions_s"] = convs
        median["rest_s"] = median["step_s_median"] - convs


def format_table(summary: dict, columns: tuple[str, ...]) -> str:
    rows = ROWS + (CONV_ROWS if "convolutions" in summary else ())
    label_width = max(len(label) for _, label, _, _ in rows)
    widths = [max(10, len(LABELS[c])) for c in columns]
    header = "  ".join(f"{LABELS[c]:>{w}}" for c, w in zip(columns, widths, strict=True))
    lines = [f"{'median over rounds':<{label_width}}  {header}"]
    for key, label, scale, fmt in rows:
        cells = []
        for column, width in zip(columns, widths, strict=True):
            value = summary[column]["median"].get(key)
            cells.append(f"{'n/a' if value is None else fmt.format(value * scale):>{width}}")
        lines.append(f"{label:<{label_width}}  " + "  ".join(cells))
    for column, key in RATIO_KEYS.items():
        name = f"{LABELS[column]}/PyTorch"
        if key in summary:
            ratio = summary[key]
            lines.append(f"{name} images/s: {ratio['median']:.2f}x median of "
                         f"{len(ratio['per_round'])} rounds (range {ratio['min']:.2f}-"
                         f"{ratio['max']:.2f})")
    return "\n".join(lines)


def ratio_summary(ratios: list[float]) -> dict:
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "per_round": ratios}


def main(argv=None) -> dict:
    args = parse_args(argv)
    shared = []
    for name in SHARED_FLAGS:
        shared += [f"--{name}", str(getattr(args, name))]
    jax_flags = shared + shlex.split(args.jax_args)
    torch_flags = shared + shlex.split(args.torch_args)
    extra = {XLA_DEFAULTS: (JAX_SCRIPT, jax_flags, JAX_DEFAULTS_ENV),
             TORCH_HUGE_PAGES: (TORCH_SCRIPT, torch_flags, {"GLIBC_TUNABLES": HUGE_PAGES})}
    chosen = {XLA_DEFAULTS: args.jax_defaults, TORCH_HUGE_PAGES: args.torch_huge_pages}
    columns = FRAMEWORKS + tuple(c for c in extra if chosen[c])
    runs = {column: [] for column in columns}
    ratios = {column: [] for column in columns if column != "torch"}
    for r in range(1, args.rounds + 1):
        print(f"--- round {r}/{args.rounds}", flush=True)
        runs["jax"].append(run_benchmark(JAX_SCRIPT, jax_flags))
        runs["torch"].append(run_benchmark(TORCH_SCRIPT, torch_flags))
        for column in columns[2:]:
            runs[column].append(run_benchmark(*extra[column]))
        torch_rate = runs["torch"][-1]["images_per_s"]
        for column in ratios:
            ratios[column].append(runs[column][-1]["images_per_s"] / torch_rate)
        print(f"round {r}: " + ", ".join(
            f"{LABELS[c]} {runs[c][-1]['images_per_s']:.2f} images/s" for c in columns)
            + "; ratios to PyTorch: " + ", ".join(
            f"{LABELS[c]} {ratios[c][-1]:.2f}" for c in ratios), flush=True)

    summary = {
        "rounds": args.rounds,
        "config": {name: getattr(args, name) for name in SHARED_FLAGS},
        "jax_args": args.jax_args, "torch_args": args.torch_args,
    }
    for fw in columns:
        summary[fw] = {"median": {key: median_of(runs[fw], key) for key, *_ in ROWS},
                       "runs": runs[fw]}
    summary["jax"]["version"] = runs["jax"][0].get("jax")
    summary["torch"]["version"] = runs["torch"][0].get("torch")
    summary["torch"]["memory_format"] = runs["torch"][0].get("memory_format")
    for column, values in ratios.items():
        summary[RATIO_KEYS[column]] = ratio_summary(values)
    if args.convs:
        conv_flags = [flag for name in CONV_SHAPE_FLAGS
                      for flag in (f"--{name}", str(getattr(args, name)))]
        summary["convolutions"] = run_benchmark(
            CONV_SCRIPT, [*conv_flags, "--unet", "--repeats", str(CONV_REPEATS)])
        split_steps(summary, summary["convolutions"]["totals"])
    print()
    print(f"JAX {summary['jax']['version']} vs PyTorch {summary['torch']['version']} "
          f"({summary['torch']['memory_format']}), {args.height}x{args.width}, batch "
          f"{args.batch}, {args.features} features, depth {args.depth}, {args.upsample}")
    print(format_table(summary, columns))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
