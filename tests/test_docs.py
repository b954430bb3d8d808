"""The README's promises: its pytest example runs as written, and its set-up lines are sane."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_emulator_example_passes_as_written(tmp_path: Path) -> None:
    blocks = re.findall(
        r"```python\n(.*?)```", section("Testing your code with the emulator"), re.S
    )
    assert blocks, "the README lost its emulator example"
    example = tmp_path / "test_readme_example.py"
    example.write_text(blocks[0], encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            str(example),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert first_block is not None
    lines = [line for line in first_block.group(1).splitlines() if line.strip()]
    assert len(lines) == 2
    assert "rtc-segment demo" in lines[0]
    assert "'.[test]'" in lines[1]
    assert "pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -q -e '.[test]'" in ci


def test_actions_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    text = section("Starting and stopping tasks")
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    printed = re.search(r"prints\n\n```\n(.*?)```", text, re.S)
    assert printed is not None
    script = tmp_path / "actions_example.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == printed.group(1)
