"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero."""

import collections
from collections.abc import Iterable

# Problem kinds, in the order a report lists them, with their headings.
PROBLEM_GROUPS = {
    "missing": "missing files or folders",
    "name": "file names not in Kaggle form",
    "duplicate": "duplicate ids",
    "unpaired": "images or masks without their partner",
    "unreadable": "unreadable or truncated TIFFs",
    "format": "wrong size, bit depth or channel count",
    "mask": "masks with values other than 0 and 255",
    "csv": "CSV rows missing, extra, malformed or disagreeing with the masks",
}


class Problem(str):
    """One problem with the data: its message (naming the file), tagged with a `kind`."""

    kind: str

    def __new__(cls, kind: str, message: str) -> "Problem":
        if kind not in PROBLEM_GROUPS:
            raise ValueError(f"unknown problem kind {kind!r}")
        problem = super().__new__(cls, message)
        problem.kind = kind
        return problem


def group_problems(problems: Iterable[str]) -> dict[str, list[Problem]]:
    """{heading: problems} in PROBLEM_GROUPS order; untagged strings go under 'other'."""
    groups = collections.defaultdict(list)
    for problem in problems:
        groups[getattr(problem, "kind", "other")].append(problem)
    order = [*PROBLEM_GROUPS, "other"]
    return {PROBLEM_GROUPS.get(kind, "other problems"): groups[kind]
            for kind in order if groups.get(kind)}


class UserError(Exception):
    """A problem with the user's input (paths, files, config values), explained in the message."""


class DataError(UserError):
    """One or more problems with a dataset folder; `problems` lists every one found."""

    def __init__(self, summary: str, problems: list[str] | None = None):
        self.summary = summary
        self.problems = list(problems or [])
        lines = [summary]
        for heading, group in group_problems(self.problems).items():
            lines.append(f"  {heading} ({len(group)}):")
            lines += [f"    - {p}" for p in group]
        super().__init__("\n".join(lines))


class TrainingDiverged(UserError):
    """A non-finite loss or gradient: training stopped, the latest checkpoint untouched. The
    command exits 3."""
