"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input (paths, files, config values), explained in the message."""


class DataError(UserError):
    """One or more problems with a dataset folder; `problems` lists every one found."""

    def __init__(self, summary: str, problems: list[str] | None = None):
        self.summary = summary
        self.problems = list(problems or [])
        lines = [summary] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))
