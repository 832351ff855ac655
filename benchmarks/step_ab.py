"""Paired A/B of XLA compiler options on the real train step, in one process.

  .venv/bin/python benchmarks/step_ab.py base \
      xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED [--rounds 8]
      [--height 128 --width 160 --batch 16 --features 32 --depth 4 --upsample pixel_shuffle]

Each variant is 'base' (the options nerve-jax compiles with) or 'name=value[;name=value...]',
XLA debug options given to `jax.jit(...).lower(...).compile(compiler_options=...)` on top of
XLA_FLAGS. Every variant's step is compiled first; then each round runs one step of every
variant, in alternating order, so load drift and thermal state hit all of them alike: a
difference of a few percent is visible here where separate runs would hide it in noise.
Prints the median and minimum step time per variant and its ratio to the first; the last line is
one JSON object. Run as a script it restarts once with glibc's huge pages, as `nerve-jax` does.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import common, train_throughput  # noqa: E402
from nerve_jax import parallel  # noqa: E402

BASE = "base"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("variants", nargs="+", help="'base' or 'name=value[;name=value...]'")
    p.add_argument("--rounds", type=int, default=8)
    # The jitted shard_map step: lower().compile() takes the options.
    train_throughput.add_config_flags(p, parallel_choice=False)
    return p.parse_args(argv)


def parse_options(variant: str) -> dict:
    """'a=1;b=true' -> {'a': '1', 'b': True}; 'base' -> {}."""
    if variant == BASE:
        return {}
    options = {}
    for item in variant.split(";"):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"variant {variant!r}: expected name=value, got {item!r}")
        options[name.strip().lstrip("-")] = {"true": True, "false": False}.get(value, value)
    return options


def compile_step(config, options: dict, mesh, batch):
    state, step = train_throughput.state_and_step(config, mesh)
    return step.lower(state, batch).compile(compiler_options=options), state


def run(variants: list[str], config, rounds: int) -> dict:
    """Medians and minima (s) of `rounds` interleaved train steps per variant."""
    mesh = parallel.make_mesh()
    batch = train_throughput.synthetic_batch(config)
    steps, states = {}, {}
    for variant in variants:
        steps[variant], states[variant] = compile_step(config, parse_options(variant), mesh,
                                                       batch)
        states[variant], _ = jax.block_until_ready(steps[variant](states[variant], batch))
    times = {variant: [] for variant in variants}
    for r in range(rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            def one_step(variant=variant):
                states[variant], metrics = steps[variant](states[variant], batch)
                jax.block_until_ready(metrics)
            times[variant] += common.time_calls(one_step, 1)
    base = common.median(times[variants[0]])
    return {variant: {"step_s_median": common.median(ts), "step_s_min": min(ts),
                      "ratio_to_first": common.median(ts) / base, "steps": ts}
            for variant, ts in times.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    for variant in args.variants:
        parse_options(variant)  # Fails before any compilation.
    config = train_throughput.make_config(args)
    results = run(args.variants, config, args.rounds)
    width = max(len(v) for v in args.variants)
    for variant, result in results.items():
        print(f"{variant:<{width}}  median {1e3 * result['step_s_median']:7.1f} ms  "
              f"min {1e3 * result['step_s_min']:7.1f} ms  ratio {result['ratio_to_first']:.3f}")
    record = {"rounds": args.rounds, "height": args.height, "width": args.width,
              "batch": args.batch, "features": args.features, "depth": args.depth,
              "upsample": args.upsample, "variants": results}
    common.print_json(record)
    return record


if __name__ == "__main__":
    common.run_main(main, huge_pages=True)
