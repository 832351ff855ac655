"""Mutation testing of the modules that decide results, with mutmut (config: pyproject.toml).

  .venv/bin/python scripts/mutation.py run|report [--per-module N] [--seed S] [--modules M ...]

`run` generates every mutant (mutmut's first run also records which tests reach which function
and checks the suite passes, ~10 min on 2 cores), then tests a seeded random sample of
`--per-module` mutants of each module (all of them with --per-module 0: hours). Results stay in
mutants/, so a later `run` only tests mutants not yet tested; `mutmut run NAME` retests one.
Both print, per module, the sampled mutants tested, killed and survived (`--survivors` lists
them), and the score killed / (killed + survived); timeouts count as killed, as in mutmut.
"""

import argparse
import collections
import glob
import json
import os
import random
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTANTS = os.path.join(REPO, "mutants")
MUTMUT = os.path.join(os.path.dirname(sys.executable), "mutmut")
KILLED = {1, 3, 36, 24, -24, 152, 255}  # mutmut's "killed" and "timeout" exit codes.
SURVIVED = {0}


def mutant_results() -> dict[str, dict[str, int | None]]:
    """{module: {mutant name: exit code, None if not tested}} from mutmut's mutants/ folder."""
    results = {}
    for meta in sorted(glob.glob(os.path.join(MUTANTS, "nerve_jax", "**", "*.py.meta"),
                                 recursive=True)):
        module = os.path.relpath(meta, MUTANTS)[: -len(".py.meta")].replace(os.sep, ".")
        with open(meta) as f:
            results[module] = json.load(f)["exit_code_by_key"]
    return results


def generate() -> None:
    """Writes every mutant, the test map and the clean-suite check (a pattern no mutant has)."""
    subprocess.run([MUTMUT, "run", "generate-only-no-such-mutant"], cwd=REPO, check=True)


def sample(results: dict, per_module: int, seed: int, modules: list[str]) -> list[str]:
    rng = random.Random(seed)
    names = []
    for module, codes in results.items():
        if modules and module not in modules:
            continue
        keys = sorted(codes)
        names += keys if per_module <= 0 else rng.sample(keys, min(per_module, len(keys)))
    return names


def scores(results: dict, chosen: set[str]) -> dict[str, dict]:
    table = {}
    for module, codes in results.items():
        tested = {k: v for k, v in codes.items() if v is not None and k in chosen}
        count = collections.Counter("killed" if v in KILLED else "survived" if v in SURVIVED
                                    else "other" for v in tested.values())
        decided = count["killed"] + count["survived"]
        table[module] = {"mutants": len(codes), "tested": len(tested),
                         **{k: count[k] for k in ("killed", "survived", "other")},
                         "score": round(count["killed"] / decided, 3) if decided else None,
                         "survivors": sorted(k for k, v in tested.items() if v in SURVIVED)}
    return table


def print_report(table: dict, survivors: bool) -> None:
    print(f"{'module':34} {'mutants':>7} {'tested':>6} {'killed':>6} {'survived':>8} "
          f"{'other':>5} {'score':>6}")
    for module, row in table.items():
        score = "-" if row["score"] is None else f"{row['score']:.3f}"
        print(f"{module:34} {row['mutants']:7d} {row['tested']:6d} {row['killed']:6d} "
              f"{row['survived']:8d} {row['other']:5d} {score:>6}")
        if survivors:
            for name in row["survivors"]:
                print(f"    survived: {name}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "report"):
        command = sub.add_parser(name)
        command.add_argument("--per-module", type=int, default=30)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--modules", nargs="*", default=[])
        command.add_argument("--survivors", action="store_true", help="list them")
    args = parser.parse_args(argv)
    if args.command == "run" and not mutant_results():
        generate()
    chosen = set(sample(mutant_results(), args.per_module, args.seed, args.modules))
    if args.command == "run":
        pending = [n for module in mutant_results().values() for n, code in module.items()
                   if n in chosen and code is None]
        if pending:
            subprocess.run([MUTMUT, "run", *pending], cwd=REPO, check=True)
    print_report(scores(mutant_results(), chosen), args.survivors)


if __name__ == "__main__":
    main()
