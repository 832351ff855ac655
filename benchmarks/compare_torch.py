"""JAX (benchmarks/train_throughput.py) vs PyTorch (benchmarks/torch_reference.py) train-step
throughput on the same UNet, in one invocation:

  .venv/bin/python benchmarks/compare_torch.py --rounds 3

  [--height 128 --width 160 --batch 16 --features 32 --depth 4 --steps 20 --warmup 2
   --upsample pixel_shuffle --jax-args "--parallel shard_map" --torch-args "--no-channels-last"]

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
SHARED_FLAGS = ("height", "width", "batch", "features", "depth", "steps", "warmup", "upsample")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "TF_NUM_INTEROP_THREADS")
FRAMEWORKS = ("jax", "torch")
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    common.add_step_flags(p)
    p.add_argument("--jax-args", default="", help="extra flags for train_throughput.py only")
    p.add_argument("--torch-args", default="", help="extra flags for torch_reference.py only")
    return p.parse_args(argv)


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    xla = [f for f in env.pop("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
    if xla:
        env["XLA_FLAGS"] = " ".join(xla)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def run_benchmark(script: str, flags: list[str]) -> dict:
    """Runs one benchmark script; returns the JSON object on its last non-empty stdout line."""
    cmd = [sys.executable, script, *flags]
    print("$ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True)
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


def format_table(summary: dict) -> str:
    label_width = max(len(label) for _, label, _, _ in ROWS)
    lines = [f"{'median over rounds':<{label_width}}  {'JAX':>10}  {'PyTorch':>10}"]
    for key, label, scale, fmt in ROWS:
        cells = []
        for fw in FRAMEWORKS:
            value = summary[fw]["median"].get(key)
            cells.append("n/a" if value is None else fmt.format(value * scale))
        lines.append(f"{label:<{label_width}}  {cells[0]:>10}  {cells[1]:>10}")
    ratio = summary["ratio_images_per_s"]
    lines.append(f"JAX/PyTorch images/s: {ratio['median']:.2f}x median of {len(ratio['per_round'])}"
                 f" rounds (range {ratio['min']:.2f}-{ratio['max']:.2f})")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    shared = []
    for name in SHARED_FLAGS:
        shared += [f"--{name}", str(getattr(args, name))]
    jax_flags = shared + shlex.split(args.jax_args)
    torch_flags = shared + shlex.split(args.torch_args)
    runs = {fw: [] for fw in FRAMEWORKS}
    ratios = []
    for r in range(1, args.rounds + 1):
        print(f"--- round {r}/{args.rounds}", flush=True)
        runs["jax"].append(run_benchmark(JAX_SCRIPT, jax_flags))
        runs["torch"].append(run_benchmark(TORCH_SCRIPT, torch_flags))
        ratio = runs["jax"][-1]["images_per_s"] / runs["torch"][-1]["images_per_s"]
        ratios.append(ratio)
        print(f"round {r}: JAX {runs['jax'][-1]['images_per_s']:.2f} images/s, PyTorch "
              f"{runs['torch'][-1]['images_per_s']:.2f} images/s, ratio {ratio:.2f}", flush=True)

    summary = {
        "rounds": args.rounds,
        "config": {name: getattr(args, name) for name in SHARED_FLAGS},
        "jax_args": args.jax_args, "torch_args": args.torch_args,
    }
    for fw in FRAMEWORKS:
        summary[fw] = {"median": {key: median_of(runs[fw], key) for key, *_ in ROWS},
                       "runs": runs[fw]}
    summary["jax"]["version"] = runs["jax"][0].get("jax")
    summary["torch"]["version"] = runs["torch"][0].get("torch")
    summary["torch"]["memory_format"] = runs["torch"][0].get("memory_format")
    summary["ratio_images_per_s"] = {"median": statistics.median(ratios), "min": min(ratios),
                                     "max": max(ratios), "per_round": ratios}
    print()
    print(f"JAX {summary['jax']['version']} vs PyTorch {summary['torch']['version']} "
          f"({summary['torch']['memory_format']}), {args.height}x{args.width}, batch "
          f"{args.batch}, {args.features} features, depth {args.depth}, {args.upsample}")
    print(format_table(summary))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
