"""Tally mutmut's results (mutants/**/*.meta) for the mutant-name patterns given on the command
line (the same globs bench/mutation.sh passes to `mutmut run`): per function and in total, plus
the names of the survivors. Used by bench/mutation.sh; reads only mutmut's own result files."""

from __future__ import annotations

import collections
import fnmatch
import json
import re
import sys
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", None: "not run"}
TIMEOUTS = {36, 24, -24, 152, 255}


def status(code: int | None) -> str:
    if code in TIMEOUTS:
        return "timeout"
    return STATUS.get(code, f"other ({code})")


def main(patterns: list[str]) -> None:
    per_function: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors: list[str] = []
    for meta in sorted(Path("mutants").rglob("*.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            function = re.sub(r"__mutmut_\d+$", "", name)
            per_function[function][status(code)] += 1
            if status(code) != "killed":
                survivors.append(f"{status(code)}: {name}")
    total: collections.Counter[str] = collections.Counter()
    for function, counts in sorted(per_function.items()):
        total.update(counts)
        print(f"{function}: {dict(counts)}")
    print(f"TOTAL {sum(total.values())} mutants: {dict(total)}")
    print("\n".join(survivors))


if __name__ == "__main__":
    main(sys.argv[1:])
