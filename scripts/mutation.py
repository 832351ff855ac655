"""Mutation testing of the modules that decide results, with mutmut (config: pyproject.toml).

  .venv/bin/python scripts/mutation.py run|report [--per-module N] [--seed S] [--modules M ...]

`run` generates every mutant (mutmut's first run also records which tests reach which function
and checks the suite passes, ~10 min on 2 cores), then tests a seeded random sample of
`--per-module` mutants of each module (all of them with --per-module 0: hours). Results stay in
mutants/, so a later `run` only tests mutants not yet tested (`--again`: also the survivors and
the mutants no test reached, after the tests changed); `mutmut run NAME` retests one.
Both print, per module, the sampled mutants tested, killed, survived and not reached (no test
of the suite run calls the mutated function; `--survivors` lists the survivors), and the score
killed / tested: a mutant not reached counts as not killed. Timeouts count as killed.
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
NOT_REACHED = {5, 33}  # No test of the suite run reaches the mutated function.


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
    """Writes every mutant, the test map and the clean-suite check, by running a pattern no
    mutant has (mutmut's exit code for "nothing matched" is not relied on)."""
    subprocess.run([MUTMUT, "run", "generate-only-no-such-mutant"], cwd=REPO, check=False)
    if not mutant_results():
        sys.exit(f"mutmut wrote no mutants under {MUTANTS}; see its output above")


def rank_marked_tests_last(seconds: float = 60.0) -> None:
    """mutmut runs a mutant's tests fastest first, timed by their call alone. The tests marked
    `mutation` spend their time in fixtures (a TFDS build, a full-resolution compile), so they
    would look instant and run first; give them `seconds` in mutmut's stats."""
    path = os.path.join(MUTANTS, "mutmut-stats.json")
    if not os.path.exists(path):
        return
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m",
                             "mutation", "-p", "no:cacheprovider"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split()
    with open(path) as f:
        stats = json.load(f)
    durations = stats["duration_by_test"]
    for test in (t for t in listed if "::" in t and t in durations):
        durations[test] = max(durations[test], seconds)
    with open(path, "w") as f:
        json.dump(stats, f)


def sample(results: dict, per_module: int, seed: int, modules: list[str]) -> list[str]:
    """Each module's sample from its own seeded generator: it does not change when modules are
    added, removed or renamed around it, and a smaller sample is the start of a larger one."""
    names = []
    for module, codes in results.items():
        if modules and module not in modules:
            continue
        keys = sorted(codes)
        rng = random.Random(f"{seed}:{module}")
        names += keys if per_module <= 0 else rng.sample(keys, min(per_module, len(keys)))
    return names


def scores(results: dict, chosen: set[str]) -> dict[str, dict]:
    table = {}
    for module, codes in results.items():
        tested = {k: v for k, v in codes.items() if v is not None and k in chosen}
        count = collections.Counter("killed" if v in KILLED else "survived" if v in SURVIVED
                                    else "not reached" if v in NOT_REACHED else "other"
                                    for v in tested.values())
        table[module] = {"mutants": len(codes), "tested": len(tested),
                         **{k: count[k] for k in ("killed", "survived", "not reached", "other")},
                         "score": round(count["killed"] / len(tested), 3) if tested else None,
                         "survivors": sorted(k for k, v in tested.items() if v in SURVIVED)}
    return table


def print_report(table: dict, survivors: bool) -> None:
    print("| module | mutants | tested | killed | survived | not reached | other | score |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for module, row in table.items():
        score = "-" if row["score"] is None else f"{row['score']:.2f}"
        print(f"| {module} | {row['mutants']} | {row['tested']} | {row['killed']} | "
              f"{row['survived']} | {row['not reached']} | {row['other']} | {score} |")
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
    sub.choices["run"].add_argument(
        "--again", action="store_true", help="also test the sampled survivors and unreached "
        "mutants again")
    args = parser.parse_args(argv)
    if args.command == "run" and not mutant_results():
        generate()
    results = mutant_results()
    chosen = set(sample(results, args.per_module, args.seed, args.modules))
    if args.command == "run":
        retest = SURVIVED | NOT_REACHED if args.again else set()
        pending = [name for codes in results.values() for name, code in codes.items()
                   if name in chosen and (code is None or code in retest)]
        if pending:
            rank_marked_tests_last()
            subprocess.run([MUTMUT, "run", *pending], cwd=REPO, check=True)
            results = mutant_results()
    print_report(scores(results, chosen), args.survivors)


if __name__ == "__main__":
    main()
