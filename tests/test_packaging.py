"""What the package promises to whoever installs it: names, supported Pythons, licence, bounds.

The heavier checks -- building both artifacts, ``twine check``, a bare wheel install, the
tests run from an unpacked sdist, an unsupported Python refused by pip -- are nox sessions
(``noxfile.py``, run by ``.ci/run``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import rtc_segment

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]
LAZY_NAMES = ("RedisRateLimiter", "RedisLimiterStats")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


# --- public names ----------------------------------------------------------------------


def test_every_name_in_all_resolves() -> None:
    missing = [name for name in rtc_segment.__all__ if not hasattr(rtc_segment, name)]
    assert missing == []
    assert len(set(rtc_segment.__all__)) == len(rtc_segment.__all__)


def test_names_needing_an_extra_resolve_lazily_but_are_not_in_all() -> None:
    from rtc_segment import _redis

    for name in LAZY_NAMES:
        assert name not in rtc_segment.__all__
        assert getattr(rtc_segment, name) is getattr(_redis, name)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        rtc_segment.NoSuchName  # noqa: B018


def test_star_import_works_without_the_redis_extra() -> None:
    # sys.modules[name] = None makes `import redis` fail as if it were not installed.
    result = run_python(
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "from rtc_segment import *\n"
        "import rtc_segment\n"
        "print(sorted(set(rtc_segment.__all__) - set(globals())))\n"
        "try:\n"
        "    rtc_segment.RedisRateLimiter\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    assert result.returncode == 0, result.stderr
    missing, error = result.stdout.splitlines()
    assert missing == "[]"  # every listed name arrived
    # Asking for the limiter itself says which extra to install.
    assert "pip install 'rtc-segment[redis]'" in error


# --- supported Pythons, licence, bounds ------------------------------------------------


def _supported_in_noxfile() -> list[str]:
    """SUPPORTED in noxfile.py, read without importing nox (not a test dependency)."""
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "SUPPORTED" for target in node.targets
        ):
            value: list[str] = ast.literal_eval(node.value)
            return value
    raise AssertionError("noxfile.py defines no SUPPORTED list")


def test_the_pythons_we_claim_are_the_pythons_nox_tests() -> None:
    prefix = "Programming Language :: Python :: "
    versions = [c.removeprefix(prefix) for c in PROJECT["classifiers"] if c.startswith(prefix)]
    claimed = sorted(
        (v for v in versions if v.replace(".", "").isdigit() and "." in v),
        key=lambda v: tuple(int(p) for p in v.split(".")),
    )
    assert claimed == _supported_in_noxfile()
    requires = SpecifierSet(PROJECT["requires-python"])
    # The lowest claimed Python is the lowest allowed one; the one before is refused.
    assert requires == SpecifierSet(f">={claimed[0]}")
    major, minor = claimed[0].split(".")
    assert f"{major}.{int(minor) - 1}" not in requires
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in claimed


def test_the_licence_file_matches_the_declared_licence() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text
    assert "LICENSE" in PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]


def test_the_installed_metadata_declares_the_same_licence_and_python() -> None:
    metadata = importlib.metadata.metadata("rtc-segment")
    stale = "the installed metadata is older than pyproject.toml: pip install -e '.[test]'"
    assert metadata["License-Expression"] == PROJECT["license"], stale
    assert metadata["Requires-Python"] == PROJECT["requires-python"], stale


def _direct_requirements() -> list[Requirement]:
    texts = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        texts.extend(extra)
    return [r for r in map(Requirement, texts) if r.name != PROJECT["name"]]


def test_every_dependency_declares_the_lower_bound_the_lowest_session_installs() -> None:
    unbounded = [
        str(r)
        for r in _direct_requirements()
        if not {s.operator for s in r.specifier} & {">=", "=="}
    ]
    assert unbounded == []


@pytest.mark.parametrize(
    ("package", "below"),
    [("httpx", "1"), ("aiolimiter", "1.4"), ("httpx-aiohttp", "0.3"), ("redis", "9")],
)
def test_dependencies_whose_internals_we_use_are_capped(package: str, below: str) -> None:
    (requirement,) = [r for r in _direct_requirements() if r.name == package]
    # Neither the next line nor its pre-releases (httpx 1.0.dev6 broke `import rtc_segment`).
    assert not requirement.specifier.contains(below, prereleases=True)
    assert not requirement.specifier.contains(f"{below}.0.dev6", prereleases=True)
