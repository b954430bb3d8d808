"""Mutation testing of the core modules: mutmut 3, plus hand-made mutants, as one table.

    python tests/mutation/run_mutation.py [MODULE ...] [--workdir DIR] [--fail-under PERCENT]

``nox -s mutation [-- MODULE ...]`` runs this. Each module (``_signing``, ``_pacing``, ...;
default: all of :data:`MODULES`) is mutated by mutmut in a scratch copy of the repository
(``<workdir>/<module>``), against only the test files listed for it in :data:`MODULES`: the
tests that should catch its faults. What mutmut cannot mutate (functions under a decorator
such as ``@lru_cache``, code run at import time) is covered by the hand-made mutants of
``hand_mutants.toml``: each is one textual replacement in the module, run against the same
tests in a fresh pytest process.

Survivors judged equivalent (no behaviour can tell them apart from the original) are listed
in ``equivalents.toml``, matched by module, function and the mutated line(s), never by
mutmut's mutant number (which shifts whenever the module changes). The last column of the
table leaves them out of the count; an entry no survivor matches any more is reported as
stale.

Every survivor that is not listed is printed with its diff, so it can be killed by a test or
listed with a reason. Exit status: 0, or 1 with ``--fail-under`` when a module's score
without equivalents is below it, or 2 when mutmut itself fails (e.g. a red clean run).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# Each core module and the tests that should catch its faults (its own test module first).
MODULES: dict[str, list[str]] = {
    "_signing": ["tests/test_signing.py", "tests/test_auth.py"],
    "_pacing": ["tests/test_pacing.py", "tests/test_limiting.py"],
    "_limiting": ["tests/test_limiting.py", "tests/test_backoff.py"],
    "_converter": ["tests/test_converter.py", "tests/test_models.py"],
    "_validation": ["tests/test_validation.py"],
    "_errors": ["tests/test_errors.py"],
    "_wire": ["tests/test_wire.py", "tests/test_transports.py"],
    "_caller": ["tests/test_caller.py", "tests/test_client.py", "tests/test_instrumentation.py"],
    "_redis": ["tests/test_redis_virtual.py"],
}
# Modules whose functions run at import time (the converter compiles its hooks then). mutmut
# runs each mutant in a fork of a process that imported the module already, so a mutant of
# such a function never takes effect there (it survives, or has "no tests"). Each mutant
# mutmut did not kill is run again in a fresh pytest process that imports the mutated
# module with the mutant active from the start.
FRESH_IMPORT = {"_converter"}
KILLED = {1, 3, 36, 37, 24, -24, 152, 255}  # failed, pytest error, timeouts, type check
PYTEST_ARGS = ["-p", "no:cacheprovider", "-q", "-x"]


@dataclass
class Survivor:
    """One mutant the tests did not kill."""

    name: str
    function: str
    added: str
    diff: str
    reason: str | None = None  # set when listed as equivalent


@dataclass
class Row:
    """One line of the table."""

    label: str
    tests: list[str]
    total: int = 0
    killed: int = 0
    survivors: list[Survivor] = field(default_factory=list)

    @property
    def equivalent(self) -> int:
        return sum(1 for s in self.survivors if s.reason is not None)

    def score(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 100.0

    def score_without_equivalents(self) -> float:
        judged = self.total - self.equivalent
        return 100.0 * self.killed / judged if judged else 100.0


# What is never copied into a scratch tree: environments, caches, earlier scratch trees.
_NOT_COPIED = {".git", ".venv", ".ci-venv", ".nox", ".mutation", "mutants", "site", "dist"}


def _copied(destination: Path) -> list[str]:
    """Copy the working tree (the tests read docs/, examples/, README.md, ...); the names."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*_cache", ".hypothesis")
    names = []
    for path in sorted(ROOT.iterdir()):
        if path.name in _NOT_COPIED or path.name.endswith(("_cache", ".egg-info")):
            continue
        if path.is_dir():
            shutil.copytree(path, destination / path.name, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(path, destination / path.name)
        names.append(path.name + ("/" if path.is_dir() else ""))
    return names


def _mutmut_config(module: str, tests: list[str], copied: list[str]) -> str:
    also_copy = [name for name in copied if name not in ("rtc_segment/", "tests/")]
    lines = [
        "",
        "[tool.mutmut]",
        'source_paths = ["rtc_segment/"]',
        f"also_copy = {json.dumps(also_copy)}",
        f'only_mutate = ["rtc_segment/{module}.py"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        f"pytest_add_cli_args = {json.dumps(['-p', 'no:cacheprovider', '-q'])}",
        "use_git_change_detection = false",
    ]
    return "\n".join(lines) + "\n"


def _functions(source: str) -> dict[str, str]:
    """Every function in mutmut's output file, by name, with its source."""
    tree = ast.parse(source)
    return {
        node.name: ast.get_source_segment(source, node) or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def _survivor(name: str, functions: dict[str, str]) -> Survivor:
    mangled = name.rsplit(".", 1)[1]
    base = mangled.rsplit("__mutmut_", 1)[0]
    original = functions.get(f"{base}__mutmut_orig", "")
    mutated = functions.get(mangled, "")
    # the mutant's def line carries its own name: compare bodies only
    original_lines = original.splitlines()[1:]
    mutated_lines = mutated.splitlines()[1:]
    diff_lines = [
        line
        for line in difflib.unified_diff(original_lines, mutated_lines, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    added = "\n".join(line[1:].strip() for line in diff_lines if line.startswith("+"))
    # x_name or xǁClassǁname -> name or Class.name
    function = base[2:] if base.startswith("x_") else ".".join(base.split("ǁ")[1:3])
    return Survivor(name=name, function=function, added=added, diff="\n".join(diff_lines))


def run_mutmut(module: str, tests: list[str], workdir: Path, children: int) -> Row:
    """mutmut over one module in a scratch copy; the row of the table it gives."""
    scratch = workdir / module
    copied = _copied(scratch)
    with (scratch / "pyproject.toml").open("a", encoding="utf-8") as project:
        project.write(_mutmut_config(module, tests, copied))
    log = scratch / "mutmut.log"
    print(f"mutmut: {module} against {' '.join(tests)} (log: {log})", flush=True)
    with log.open("w", encoding="utf-8") as output:
        finished = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(children)],
            cwd=scratch,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        )
    meta = scratch / "mutants" / "rtc_segment" / f"{module}.py.meta"
    if finished.returncode != 0 or not meta.exists():
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        print(f"mutmut failed on {module} (exit {finished.returncode}):\n{tail}", flush=True)
        raise SystemExit(2)
    results: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    functions = _functions((scratch / "mutants" / "rtc_segment" / f"{module}.py").read_text())
    row = Row(label=f"`{module}.py`", tests=tests, total=len(results))
    if module in FRESH_IMPORT and _killed_in_a_fresh_process("", tests, scratch):
        print(f"the tests fail in a fresh process without any mutant: {module}", flush=True)
        raise SystemExit(2)
    not_killed = sorted(name for name, exit_code in results.items() if exit_code not in KILLED)
    if module in FRESH_IMPORT:
        with ThreadPoolExecutor(max_workers=children) as pool:
            killed_fresh = list(
                pool.map(lambda name: _killed_in_a_fresh_process(name, tests, scratch), not_killed)
            )
        not_killed = [
            name for name, killed in zip(not_killed, killed_fresh, strict=True) if not killed
        ]
    row.killed = row.total - len(not_killed)
    row.survivors = [_survivor(name, functions) for name in not_killed]
    return row


def _killed_in_a_fresh_process(mutant: str, tests: list[str], scratch: Path) -> bool:
    """Whether the tests fail with ``mutant`` active from the interpreter's start
    (``""``: none, the original code)."""
    mutated_tree = scratch / "mutants"  # first on sys.path: python -m puts the cwd there
    environment = {**os.environ, "MUTANT_UNDER_TEST": mutant, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests],
            cwd=mutated_tree,
            env=environment,
            capture_output=True,
            check=False,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return True
    outcome = "killed" if finished.returncode else "survived"
    print(f"  fresh process: {mutant or 'no mutant'}: {outcome}", flush=True)
    return finished.returncode != 0


def run_hand_mutants(module: str, tests: list[str], workdir: Path) -> Row | None:
    """The hand-made mutants of ``module``, each run in a fresh pytest process."""
    listed = tomllib.loads((HERE / "hand_mutants.toml").read_text(encoding="utf-8"))
    mutants = [m for m in listed.get("mutant", []) if m["module"] == module]
    if not mutants:
        return None
    scratch = workdir / f"{module}-hand"
    _copied(scratch)
    path = scratch / "rtc_segment" / f"{module}.py"
    pristine = path.read_text(encoding="utf-8")
    row = Row(label=f"`{module}.py`, hand-made mutants", tests=tests)
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for number, mutant in enumerate(mutants, 1):
        if pristine.count(mutant["original"]) != 1:
            # the module changed under it: say so, and leave it out rather than fail the run
            print(
                f"stale hand mutant {module} #{number} ({mutant['function']}): "
                "`original` does not occur exactly once; skipped",
                flush=True,
            )
            continue
        row.total += 1
        path.write_text(pristine.replace(mutant["original"], mutant["mutated"]), encoding="utf-8")
        try:
            finished = subprocess.run(
                [sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests],
                cwd=scratch,
                env=environment,
                capture_output=True,
                check=False,
                timeout=600,
            )
            killed = finished.returncode != 0
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            path.write_text(pristine, encoding="utf-8")
        print(
            f"  hand mutant #{number} ({mutant['function']}): {'killed' if killed else 'SURVIVED'}",
            flush=True,
        )
        if killed:
            row.killed += 1
        else:
            diff = f"-{mutant['original']}\n+{mutant['mutated']}"
            row.survivors.append(
                Survivor(f"{module}-hand-{number}", mutant["function"], mutant["mutated"], diff)
            )
    return row


def mark_equivalents(row: Row, module: str, hand: bool) -> list[dict[str, str]]:
    """Give listed survivors their reason; the entries for this row that matched none."""
    listed = tomllib.loads((HERE / "equivalents.toml").read_text(encoding="utf-8"))
    entries = [
        e
        for e in listed.get("equivalent", [])
        if e["module"] == module and bool(e.get("hand", False)) == hand
    ]
    unmatched = []
    for entry in entries:
        matches = [
            s
            for s in row.survivors
            if s.function == entry["function"] and s.added == entry["mutated"].strip()
        ]
        for survivor in matches:
            survivor.reason = entry["reason"]
        if not matches:
            unmatched.append(entry)
    return unmatched


def table(rows: list[Row]) -> str:
    """The Markdown table of docs/testing.md."""
    lines = [
        "| module | tests used | mutants | killed | score | without equivalents |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        tests = ", ".join(Path(t).stem for t in row.tests)
        lines.append(
            f"| {row.label} | {tests} | {row.total} | {row.killed} | {row.score():.1f} % "
            f"| {row.score_without_equivalents():.1f} % ({row.equivalent} equivalent) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"default: {' '.join(MODULES)}")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".mutation")
    parser.add_argument("--children", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--fail-under", type=float, default=None)
    parser.add_argument("--no-hand", action="store_true", help="skip the hand-made mutants")
    parser.add_argument(
        "--tests", nargs="+", help="run these test files instead of the module's own (one module)"
    )
    arguments = parser.parse_args(argv)
    modules = [m if m.startswith("_") else f"_{m}" for m in arguments.modules] or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {' '.join(MODULES)}")
    if arguments.tests and len(modules) != 1:
        parser.error("--tests needs exactly one module")

    rows: list[Row] = []
    stale: list[dict[str, str]] = []
    for module in modules:
        tests = arguments.tests or [t for t in MODULES[module] if (ROOT / t).exists()]
        row = run_mutmut(module, tests, arguments.workdir.resolve(), arguments.children)
        stale += mark_equivalents(row, module, hand=False)
        rows.append(row)
        if not arguments.no_hand:
            hand_row = run_hand_mutants(module, tests, arguments.workdir.resolve())
            if hand_row is not None:
                stale += mark_equivalents(hand_row, module, hand=True)
                rows.append(hand_row)
        # The table so far, after each module: a long run shows its rows as it goes (and
        # an interrupted one keeps them in table.md).
        print("\n" + table(rows), flush=True)
        (arguments.workdir / "table.md").write_text(table(rows) + "\n", encoding="utf-8")

    for row in rows:
        unexplained = [s for s in row.survivors if s.reason is None]
        if unexplained:
            print(f"\n{row.label}: {len(unexplained)} survivor(s) not listed as equivalent")
            for survivor in unexplained:
                print(f"--- {survivor.name} ({survivor.function})\n{survivor.diff}")
    for entry in stale:
        print(
            f"\nstale equivalent (matches no survivor): {entry['module']} {entry['function']}: "
            f"{entry['mutated']!r}"
        )
    rendered = table(rows)
    print("\n" + rendered)
    (arguments.workdir / "table.md").write_text(rendered + "\n", encoding="utf-8")
    if arguments.fail_under is not None:
        low = [r.label for r in rows if r.score_without_equivalents() < arguments.fail_under]
        if low:
            print(f"below {arguments.fail_under} % without equivalents: {', '.join(low)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
