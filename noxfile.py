"""Test environments: every supported Python, both ends of the dependency ranges, packaging.

    nox -s tests-3.12       the README's test command on one interpreter
    nox -s lowest           the lowest version of every direct dependency we declare
    nox -s newest           the newest allowed version of everything, on the newest Python
    nox -s packaging        build, twine check, LICENSE, a bare wheel, tests from the sdist
    nox -s unsupported_python   an older Python is refused at install time
    nox -s uvloop           the loop-sensitive suites on uvloop (uvicorn[standard]'s loop)
    nox -s tz               the time-handling tests under Asia/Shanghai and America/New_York
    nox -s mutation         mutation testing of the core modules (slow; not run by CI)

Extra arguments go to pytest: ``nox -s lowest -- tests/test_redis.py -k restart``.
Packages come from wherever pip is configured to fetch them (``pip config list``), the same
as for the README's commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tomllib
import zipfile
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent
SUPPORTED = ["3.11", "3.12", "3.13"]  # keep in step with the classifiers in pyproject.toml
UNSUPPORTED = "3.10"
PYTEST = ("python", "-m", "pytest", "-q", "-p", "no:cacheprovider")
# Tests run from the unpacked sdist: those that read files beside the package (README,
# .ci/run, examples/, pyproject.toml, LICENSE, tests/data) and a share of the rest.
SDIST_SAMPLE = (
    "tests/test_packaging.py",
    "tests/test_signing.py",
    "tests/test_webapp_example.py",
    "tests/test_converter.py",
    "tests/test_credentials.py",
)
# On a wheel installed without extras: the star import works, the Redis limiter is not in
# __all__, and asking for it names the extra to install.
BARE_IMPORT_CHECK = """
from rtc_segment import *
import rtc_segment
assert "RedisRateLimiter" not in rtc_segment.__all__
try:
    rtc_segment.RedisRateLimiter
except ImportError as exc:
    assert "rtc-segment[redis]" in str(exc), exc
else:
    raise AssertionError("redis is installed in the bare environment")
print("bare wheel:", __version__, "imports;", len(rtc_segment.__all__), "names in __all__")
"""

# The suites whose behaviour depends on the event loop: limiting, pacing, the HTTP path,
# fan-out, watching (test_scheduling_emulator), the end-to-end guarantees (with
# test_any_loop's real-time ceiling), the hooks' contexts (contextvars travel with the
# loop's callbacks), the transports and the rate limiter's bucket (test_compat). Their
# tests in virtual time stay on asyncio's loop (tests/conftest.py; docs/testing.md says why).
UVLOOP_SUITES = (
    "tests/test_limiting.py",
    "tests/test_host_processes.py",
    "tests/test_pacing.py",
    "tests/test_caller.py",
    "tests/test_fanout.py",
    "tests/test_scheduling_emulator.py",
    "tests/reliability/",
    "tests/test_instrumentation.py",
    "tests/test_otel.py",
    "tests/test_telemetry.py",
    "tests/test_transports.py",
    "tests/test_compat.py",
)
# uvloop is installed in the uvloop session only: never a dependency of the package.
# pytest-asyncio 1.4 added the loop factory hook tests/conftest.py uses.
UVLOOP_REQUIREMENTS = ("uvloop>=0.21", "pytest-asyncio>=1.4")

nox.needs_version = ">=2025.10.14"  # options.download_python
nox.options.sessions = [
    *(f"tests-{v}" for v in SUPPORTED),
    "lowest",
    "newest",
    "packaging",
    "unsupported_python",
    "uvloop",
    "tz",
]
# Interpreters are found on this machine, never downloaded: a missing one is skipped
# locally and is an error in CI (nox's default when CI is set).
nox.options.download_python = "never"


def _interpreter_runs(command: str) -> bool:
    """Whether ``command`` on PATH starts a Python (pyenv's shims exist but refuse to run
    versions that are installed yet not selected)."""
    try:
        return (
            subprocess.run(
                [command, "-c", ""], capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _pyenv_root() -> Path | None:
    if root := os.environ.get("PYENV_ROOT"):
        return Path(root)
    if pyenv := shutil.which("pyenv"):
        found = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            return Path(found.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _reach_pyenv_interpreters(minor_versions: list[str]) -> None:
    """Put pyenv's installed interpreters on PATH where PATH has no working ``pythonX.Y``.

    nox looks interpreters up as ``pythonX.Y`` on PATH; with pyenv, only the selected
    version's shim works, so each other installed version's own ``bin`` (the newest patch
    release of that minor version) is put in front.
    """
    root = _pyenv_root()
    if root is None or not (root / "versions").is_dir():
        return
    prefix = []
    for minor in minor_versions:
        if _interpreter_runs(f"python{minor}"):
            continue
        candidates = [
            path.parent
            for path in (root / "versions").glob(f"{minor}.*/bin/python{minor}")
            if re.fullmatch(rf"{re.escape(minor)}\.\d+", path.parent.parent.name)
        ]
        if candidates:
            newest = max(candidates, key=lambda b: int(b.parent.name.rsplit(".", 1)[1]))
            prefix.append(str(newest))
    if prefix:
        os.environ["PATH"] = os.pathsep.join([*prefix, os.environ.get("PATH", "")])


_reach_pyenv_interpreters([*SUPPORTED, UNSUPPORTED])


def lowest_constraints(pyproject: Path, extra: str = "test") -> list[str]:
    """``name==lower-bound`` for every direct requirement that installing ``.[extra]`` pulls.

    That is the package's dependencies and those of ``extra``, following the extra's
    references to the package's other extras. Every one must declare a lower bound
    (``>=`` or ``==``): a requirement without one is an error, since its lowest version
    would be untested.
    """
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name = project["name"]
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    requirements = [Requirement(text) for text in project.get("dependencies", [])]
    todo, seen = [extra], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for text in extras[current]:
            requirement = Requirement(text)
            if requirement.name == name:
                todo.extend(requirement.extras)
            else:
                requirements.append(requirement)
    pins: dict[str, str] = {}
    for requirement in requirements:
        lows = [s.version for s in requirement.specifier if s.operator in (">=", "==")]
        if not lows:
            raise ValueError(f"{requirement} declares no lower bound")
        pins[requirement.name] = max(lows, key=Version)
    return [f"{package}=={version}" for package, version in sorted(pins.items())]


# Every test module whose code turns instants into text or back (signing's X-Date, the
# credentials' expiry, the models' epoch milliseconds, the CLI's local times, Retry-After
# dates, the emulator's clock and task ages): the whole suite takes minutes, and the rest
# never looks at the local zone. `nox -s tz -- tests/` runs everything instead.
TZ_TESTS = (
    "tests/test_signing.py",
    "tests/test_auth.py",
    "tests/test_credentials.py",
    "tests/test_models.py",
    "tests/test_converter.py",
    "tests/test_cli.py",
    "tests/test_cli_parts.py",
    "tests/test_cli_actions.py",
    "tests/test_transports.py",
    "tests/test_actions.py",
    "tests/test_testing_clock.py",
    "tests/test_testing_state.py",
    "tests/test_testing_emulator.py",
)
# A zone far from UTC all year, and one with daylight saving time.
TZ_ZONES = ["Asia/Shanghai", "America/New_York"]
# Proof that the zone took effect: with no zone database, TZ=Asia/Shanghai silently is UTC.
TZ_CHECK = """
import os, time
offset = time.localtime(1_700_000_000).tm_gmtoff  # 14 November 2023: no DST anywhere
expected = {"Asia/Shanghai": 8 * 3600, "America/New_York": -5 * 3600}[os.environ["TZ"]]
assert offset == expected, (os.environ["TZ"], offset, "is the tz database (tzdata) installed?")
print("local zone:", os.environ["TZ"], time.strftime("%Z %z", time.localtime(1_700_000_000)))
"""


def _run_suite(session: nox.Session) -> None:
    session.run(*PYTEST, *session.posargs, env={"PYTHONDONTWRITEBYTECODE": "1"})


@nox.session(python=SUPPORTED)
def tests(session: nox.Session) -> None:
    """The README's test command: ``pip install -e '.[test]'``, then the whole suite."""
    session.install("-e", ".[test]")
    _run_suite(session)


@nox.session(python=SUPPORTED[0])
def lowest(session: nox.Session) -> None:
    """The suite with every direct dependency at the lowest version pyproject.toml allows."""
    constraints = Path(session.create_tmp()) / "lowest-constraints.txt"
    constraints.write_text("\n".join(lowest_constraints(ROOT / "pyproject.toml")) + "\n")
    session.log("pinned: " + ", ".join(constraints.read_text().split()))
    session.install("-c", str(constraints), "-e", ".[test]")
    _run_suite(session)


@nox.session(python=SUPPORTED[-1])
def newest(session: nox.Session) -> None:
    """The suite with the newest version of everything the bounds allow, on the newest Python."""
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", ".[test]")
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    _run_suite(session)


@nox.session(python=SUPPORTED[-1])
def uvloop(session: nox.Session) -> None:
    """The loop-sensitive suites on uvloop, the event loop ``uvicorn[standard]`` runs
    applications on (``--event-loop=uvloop``; see docs/testing.md)."""
    session.install("-e", ".[test]", *UVLOOP_REQUIREMENTS)
    session.run(
        *PYTEST,
        "--event-loop=uvloop",
        *(session.posargs or UVLOOP_SUITES),
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )


@nox.session(python=SUPPORTED[0])
def packaging(session: nox.Session) -> None:
    """What a publisher checks: both artifacts build and pass ``twine check``, the LICENSE
    ships in both, a bare wheel (no extras) imports, and the sdist runs its own tests."""
    session.install("build", "twine")
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    # build makes the sdist first and the wheel from it: the sdist alone must build.
    session.run("python", "-m", "build", "--outdir", str(dist), silent=True)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    session.run("python", "-m", "twine", "check", "--strict", str(sdist), str(wheel))

    with tarfile.open(sdist) as archive:
        sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = set(archive.namelist())
    if "LICENSE" not in sdist_names:
        session.error("the sdist has no LICENSE")
    if not any(re.search(r"\.dist-info/licenses/LICENSE$", n) for n in wheel_names):
        session.error("the wheel has no LICENSE")

    # A bare install: the wheel and its runtime dependencies, no extra.
    bare = Path(session.create_tmp()) / "bare"
    shutil.rmtree(bare, ignore_errors=True)
    session.run("python", "-m", "venv", str(bare))
    bare_python = str(bare / "bin" / "python")
    session.run(bare_python, "-m", "pip", "install", "-q", str(wheel), external=True)
    session.run(bare_python, "-c", BARE_IMPORT_CHECK, external=True)

    # The unpacked sdist runs its own tests: all of them collect, and a sample passes.
    unpacked = Path(session.create_tmp()) / "sdist"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (source,) = unpacked.iterdir()
    session.install(f"{source}[test]")
    with session.chdir(source):
        session.run(*PYTEST, "-q", "--collect-only")  # -qq: a count per test module
        session.run(*PYTEST, *SDIST_SAMPLE)


@nox.session(python=UNSUPPORTED)
def unsupported_python(session: nox.Session) -> None:
    """The README's install command on a Python we do not support fails at install time,
    naming the interpreter requirement (not later, at import, with a syntax error)."""
    output = session.run(
        "python", "-m", "pip", "install", "-e", ".[test]", silent=True, success_codes=[1]
    )
    if not isinstance(output, str) or "requires a different Python" not in output:
        session.error(f"pip did not refuse Python {UNSUPPORTED} by requires-python:\n{output}")
    session.log(next(line for line in output.splitlines() if "requires a different" in line))


@nox.session(python=SUPPORTED[0])
@nox.parametrize("zone", TZ_ZONES, ids=["shanghai", "new_york"])
def tz(session: nox.Session, zone: str) -> None:
    """The time-handling tests (``TZ_TESTS``) with the process's local zone set to ``zone``:
    CI runs in UTC, users do not. Extra arguments replace the test list."""
    session.install("-e", ".[test]")
    env = {"TZ": zone, "PYTHONDONTWRITEBYTECODE": "1"}
    session.run("python", "-c", TZ_CHECK, env=env)
    session.run(*PYTEST, *(session.posargs or TZ_TESTS), env=env)


@nox.session(python=SUPPORTED[0], default=False)
def mutation(session: nox.Session) -> None:
    """Mutation testing of the core modules (slow: not in CI's run, not a default session).

    mutmut 3 mutates each module in a scratch copy (``.mutation/<module>``) and runs the
    tests listed for it in ``tests/mutation/run_mutation.py``; hand-made mutants cover what
    mutmut skips. Prints the table of docs/testing.md. Modules as posargs:
    ``nox -s mutation -- _validation _errors``; ``--fail-under 98`` fails below that score.
    """
    session.install("-e", ".[test]", "mutmut==3.8.1")
    session.run("python", "tests/mutation/run_mutation.py", *session.posargs)
