"""Exit codes shared by every verb (documented in ``trade2026 --help`` and the README)."""

OK = 0
PROBLEM_FOUND = 1
USAGE = 2
BAD_INPUT = 3
UNREACHABLE = 4
RUN_FAILED = 5
