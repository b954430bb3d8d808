"""The documentation's promises: README.md and every page under docs/ say what the code does.

**Python examples** (```python blocks) are of three kinds, told apart by their content:

* a *test module* (it defines ``test_`` functions) runs under pytest in a subprocess, in
  ``asyncio_mode = "auto"``, and every test in it must pass;
* a *script* (it calls ``asyncio.run(``) runs as ``__main__``, in real time;
* a *fragment* (anything else) runs as the body of an async function -- top-level ``await``,
  ``async for`` and ``async with`` allowed -- in looptime's virtual time, with ``client``,
  ``emulator``, ``app_id``, ``room_id``, ``task_id`` and ``keys`` already defined (see
  :class:`Service`). An example that needs real time (sockets, Redis) is written as a script.

When the paragraph after a script or fragment is "prints", the fenced block after that is
its exact standard output.

The examples are written for the real service; here the emulator stands in for it. A
``SegmentClient`` built without ``transport`` and ``endpoint`` talks to an in-process
emulator (:class:`Service`), the environment holds the emulator's test credentials, and a
script that imports ``redis`` runs with ``REDIS_URL`` pointing at a test redis-server.

**Command-line transcripts** (```console blocks) run top to bottom in a fresh directory,
against an in-process emulator seeded as ``rtc-segment emulator`` seeds it by default.
``$`` lines are commands (``\\`` continues one): ``rtc-segment ...`` (optionally followed by
``> FILE``, ``| cut -c1-N`` and ``; echo $?``), ``echo $?``, ``cat FILE`` (a file that does
not exist yet is written from the lines shown: what you read is what ran) and
``cut -c1-N FILE``. Standard output is a terminal unless redirected or piped; standard error
is not (so no progress bars). ``rtc-segment emulator`` runs as a real process on a free
port; its banner is compared and later commands of the block talk to it over HTTP. In the
expected output, ``...`` stands for any text within a line, and for any number of lines
when alone on its line. A transcript whose introducing paragraph says "trimmed" is an
excerpt of a real run and is not run.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from _cli_support import Terminal, run

import rtc_segment
from rtc_segment import Backoff, SegmentClient, StopReason, TaskKey
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Lifecycle

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
README_LIMIT = 14 * 1024


# -- reading the pages ------------------------------------------------------------------


class Block(NamedTuple):
    """One fenced block of a page."""

    page: Path
    line: int
    lang: str
    code: str
    before: str
    """The text between the previous block (or the top of the page) and this one."""

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)"
    r"^(?P=indent)(?P=fence)[ \t]*$",
    re.M | re.S,
)
# What each language of a fence means here: python and console blocks are run (see above),
# the others are shown only. A block in another language (py, pycon, bash...) would be
# skipped silently, so it is refused.
KNOWN_LANGUAGES = {"python", "console", "sh", "text", "json", "toml", "yaml"}


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    found: list[Block] = []
    previous_end = 0
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[previous_end : match.start()]
        code = textwrap.dedent(match["code"])  # a block inside a list item is indented
        found.append(Block(page, line, match["lang"], code, before))
        previous_end = match.end()
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def printed_after(block: Block) -> str | None:
    """The output a page promises for ``block``: the block after a "prints" paragraph."""
    blocks = blocks_of(block.page)
    index = blocks.index(block)
    if index + 1 < len(blocks):
        following = blocks[index + 1]
        if following.before.strip().rstrip(":").lower() == "prints":
            return following.code
    return None


def kind_of(code: str) -> str:
    """``"test module"``, ``"script"`` or ``"fragment"`` (see the module docstring)."""
    if re.search(r"^(async )?def test_", code, re.M):
        return "test module"
    if "asyncio.run(" in code:
        return "script"
    return "fragment"


PYTHON = [block for block in ALL_BLOCKS if block.lang == "python"]
TEST_MODULES = [block for block in PYTHON if kind_of(block.code) == "test module"]
SCRIPTS = [block for block in PYTHON if kind_of(block.code) == "script"]
FRAGMENTS = [block for block in PYTHON if kind_of(block.code) == "fragment"]
TRANSCRIPTS = [block for block in ALL_BLOCKS if block.lang == "console"]


def ids(blocks: list[Block]) -> list[str]:
    return [block.name for block in blocks]


# -- the service the examples talk to ---------------------------------------------------


class Service:
    """The emulator standing in for the service, and the names fragments may use.

    ``client`` and ``emulator``; ``app_id``/``room_id``/``task_id``, a task that runs for
    30 s and then ends; ``keys``, five tasks ending 10, 20, ... 50 s after the start plus
    one that does not exist. The emulator also serves ``your_app_id/room1/task1`` (the
    quickstart's) and the 20 seeded rooms ``demo-app/room-00000`` to ``room-00019``.
    """

    def __init__(self) -> None:
        self.emulator = Emulator()
        self.emulator.seed_rooms(20)
        self.emulator.add_task("your_app_id", "room1", "task1")
        self.app_id, self.room_id, self.task_id = "demo-app", "room-1", "task-1"
        self.emulator.add_task(
            self.app_id,
            self.room_id,
            self.task_id,
            lifecycle=Lifecycle.after_seconds(ended=30, stop_reason=StopReason.IDLE_TIMEOUT),
        )
        self.keys = [TaskKey(self.app_id, f"room-w{n}", f"task-w{n}") for n in range(1, 6)]
        for n, key in enumerate(self.keys, start=1):
            self.emulator.add_task(*key, lifecycle=Lifecycle.after_seconds(ended=10 * n))
        self.keys.append(TaskKey(self.app_id, "room-gone", "task-gone"))

    def client_class(self) -> type[SegmentClient]:
        """``SegmentClient``, sending to the emulator unless told where to send."""
        emulator = self.emulator

        class SegmentClientOnTheEmulator(SegmentClient):
            def __init__(self, credentials: Any = None, **options: Any) -> None:
                if options.get("transport") is None and "endpoint" not in options:
                    options["transport"] = emulator.transport()
                    options.setdefault("clock", emulator.wall_clock)
                super().__init__(credentials, **options)

        return SegmentClientOnTheEmulator

    def client(self) -> SegmentClient:
        return SegmentClient(
            DEFAULT_CREDENTIALS,
            transport=self.emulator.transport(),
            clock=self.emulator.wall_clock,  # virtual time moves the emulator's clock ahead
        )


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Service:
    """An emulated service, the test credentials in the environment, no ~/.volc file."""
    service = Service()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("VOLC_ACCESSKEY", DEFAULT_CREDENTIALS.access_key_id)
    monkeypatch.setenv("VOLC_SECRETKEY", DEFAULT_CREDENTIALS.secret_access_key)
    monkeypatch.delenv("VOLC_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(rtc_segment, "SegmentClient", service.client_class())
    return service


def require_redis(request: pytest.FixtureRequest) -> str:
    """``redis://`` URL of the session's test redis-server (skip without one, except in CI)."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed, and CI=true", pytrace=False)
        pytest.skip("redis-server is not installed")
    server = request.getfixturevalue("redis_proc")
    return f"redis://{server.host}:{server.port}/0"


# -- Python examples ----------------------------------------------------------------------


def test_every_fenced_block_names_a_known_language() -> None:
    unknown = [
        f"{block.name} {block.lang!r}" for block in ALL_BLOCKS if block.lang not in KNOWN_LANGUAGES
    ]
    assert unknown == []


def test_every_example_and_transcript_is_found() -> None:
    # The walk itself: every fence opened in a page is a block it collects.
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for lang, found in (("python", PYTHON), ("console", TRANSCRIPTS)):
            opened = len(re.findall(rf"^[ \t]*```{lang}\b", text, re.M))
            assert opened == len([block for block in found if block.page == page]), (page, lang)
    readme = [block for block in PYTHON if block.page == README]
    assert [kind_of(block.code) for block in readme] == ["script"]  # the quickstart
    assert TEST_MODULES and FRAGMENTS


@pytest.mark.parametrize("block", TEST_MODULES, ids=ids(TEST_MODULES))
def test_test_module_passes_as_written(block: Block, tmp_path: Path) -> None:
    module = tmp_path / "test_docs_example.py"
    module.write_text(block.code, encoding="utf-8")
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
            str(module),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tests = len(re.findall(r"^(?:async )?def test_", block.code, re.M))
    assert f"{tests} passed" in result.stdout


@pytest.mark.parametrize("block", SCRIPTS, ids=ids(SCRIPTS))
def test_script_runs_and_prints_what_the_page_says(
    block: Block,
    service: Service,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    if re.search(r"^\s*(from|import) redis\b", block.code, re.M):
        monkeypatch.setenv("REDIS_URL", require_redis(request))
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    runpy.run_path(str(script), run_name="__main__")
    printed = printed_after(block)
    if printed is not None:
        assert capsys.readouterr().out == printed


@pytest.mark.looptime
@pytest.mark.parametrize("block", FRAGMENTS, ids=ids(FRAGMENTS))
async def test_fragment_runs_and_prints_what_the_page_says(
    block: Block, service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code = compile(block.code, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    async with service.client() as client:
        names: dict[str, Any] = {
            "__name__": "__docs__",
            "client": client,
            "emulator": service.emulator,
            "app_id": service.app_id,
            "room_id": service.room_id,
            "task_id": service.task_id,
            "keys": list(service.keys),
        }
        result = eval(code, names)
        if inspect.iscoroutine(result):
            await result
    printed = printed_after(block)
    if printed is not None:
        assert capsys.readouterr().out == printed


async def test_web_app_example_serves_a_page_of_rooms(service: Service) -> None:
    (block,) = [block for block in PYTHON if block.page == DOCS / "web-app.md"]
    names: dict[str, Any] = {"__name__": "webapp_example"}
    exec(compile(block.code, block.name, "exec"), names)
    app = names["app"]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get(
                "/apps/demo-app/tasks", params=[("room", "room-1:task-1"), ("room", "x:nope")]
            )
    assert response.status_code == 200
    first, second = response.json()["tasks"]
    assert first == {"room_id": "room-1", "status": "RUNNING", "error": None}
    assert second["room_id"] == "x" and second["status"] is None
    assert second["error"].startswith("InvalidParameter.ErrorActiveTaskNotFound")


def test_the_emulator_page_example_has_four_tests() -> None:
    (block,) = [block for block in TEST_MODULES if block.page == DOCS / "testing.md"]
    assert len(re.findall(r"^async def test_", block.code, re.M)) == 4


# -- command-line transcripts -------------------------------------------------------------


def is_trimmed(block: Block) -> bool:
    paragraph = block.before.strip().split("\n\n")[-1]
    return re.search(r"\btrimmed\b", paragraph) is not None


CHECKED_TRANSCRIPTS = [block for block in TRANSCRIPTS if not is_trimmed(block)]


class Command(NamedTuple):
    line: str
    expected: list[str]


def commands_of(transcript: str) -> list[Command]:
    commands: list[Command] = []
    pending = ""
    for line in transcript.splitlines():
        if pending or line.startswith("$ "):
            text = pending + (line[2:] if not pending else line.strip())
            if text.endswith("\\"):
                pending = text[:-1].rstrip() + " "
                continue
            pending = ""
            commands.append(Command(text, []))
        else:
            assert commands, f"output before the first command: {line!r}"
            commands[-1].expected.append(line)
    return commands


def _part_pattern(part: str) -> str:
    # A gap of two spaces or more is a table's column gap: its width follows the widest
    # cell, which may be a value the page shows as `...` (a rate, a duration).
    return " {2,}".join(re.escape(piece) for piece in re.split(" {2,}", part))


def assert_output(actual: list[str], expected: list[str], command: str) -> None:
    """``actual`` matches ``expected``, where ``...`` stands for text or, alone, for lines,
    and a gap of two spaces or more for any such gap (columns aligned to a varying cell)."""
    actual_text = "".join(line.rstrip() + "\n" for line in actual)
    pattern = ""
    for line in expected:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            parts = line.rstrip().split("...")
            pattern += r"[^\n]*?".join(_part_pattern(part) for part in parts) + r"\n"
    if re.fullmatch(pattern, actual_text) is None:
        assert actual_text == "".join(line + "\n" for line in expected), command


class _Recorder(io.StringIO):
    """One output stream; every write is also logged, in order, with the other stream's."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        super().__init__()
        self._name = name
        self._log = log

    def write(self, text: str) -> int:
        self._log.append((self._name, text))
        return super().write(text)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SUFFIXES = re.compile(
    r"^(?P<command>.*?)(?:\s+>\s*(?P<redirect>\S+))?(?:\s*\|\s*cut -c1-(?P<cut>\d+))?"
    r"(?P<status>\s*;\s*echo \$\?)?$"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Shell:
    """Runs the commands of one transcript (see the module docstring for what it knows)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.status = 0
        self.emulator = Emulator()
        self.emulator.seed_rooms(100)  # as `rtc-segment emulator` does by default
        self.served: subprocess.Popen[str] | None = None
        self.ports: dict[str, str] = {}  # port in the transcript -> port really used

    def close(self) -> None:
        if self.served is not None and self.served.poll() is None:
            self.served.send_signal(signal.SIGINT)
            try:
                self.served.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.served.kill()
                self.served.wait()

    def real_ports(self, text: str) -> str:
        for shown, used in self.ports.items():
            text = text.replace(f":{shown}", f":{used}")
        return text

    def run(self, command: Command) -> None:
        line = command.line
        if line == "echo $?":
            assert_output([str(self.status)], command.expected, line)
            return
        words = shlex.split(line)
        if words[0] == "cat" and len(words) == 2:
            path = self.directory / words[1]
            if not path.exists():  # an input file: it holds what the page shows
                path.write_text("".join(f"{text}\n" for text in command.expected))
            assert_output(path.read_text().splitlines(), command.expected, line)
            return
        cut = re.fullmatch(r"cut -c1-(\d+) (\S+)", line)
        if cut is not None:
            lines = (self.directory / cut[2]).read_text().splitlines()
            assert_output([text[: int(cut[1])] for text in lines], command.expected, line)
            return
        parts = _SUFFIXES.fullmatch(line)
        assert parts is not None and words[0] == "rtc-segment", f"cannot run {line!r}"
        argv = shlex.split(self.real_ports(parts["command"]))[1:]
        if argv[0] == "emulator":
            self.serve(argv, command)
            return
        output = self.rtc_segment(argv, redirect=parts["redirect"], cut=parts["cut"])
        if parts["status"]:
            output.append(str(self.status))
        assert_output(output, [self.real_ports(text) for text in command.expected], line)

    def rtc_segment(self, argv: list[str], *, redirect: str | None, cut: str | None) -> list[str]:
        """Run the command in process; return what a terminal would show."""
        log: list[tuple[str, str]] = []
        stdout, stderr = _Recorder("out", log), _Recorder("err", log)
        terminal = Terminal.create(
            stdin=io.StringIO(""),
            stdout=stdout,
            stderr=stderr,
            stdout_is_terminal=redirect is None and cut is None,
            stderr_is_terminal=False,
        )
        # With an emulator process serving, commands go to it over HTTP (their --endpoint).
        transport = None if self.served is not None else self.emulator.transport()
        self.status = run(argv, terminal=terminal, transport=transport)
        if redirect is not None and redirect != "/dev/null":
            (self.directory / redirect).write_text(stdout.getvalue())
        shown: list[str] = []
        pending = {"out": "", "err": ""}
        for stream, text in log:
            pending[stream] += text
            *complete, pending[stream] = pending[stream].split("\n")
            for line in complete:
                if stream == "out":
                    if redirect is not None:
                        continue
                    line = _ANSI.sub("", line)
                    if cut is not None:
                        line = line[: int(cut)]
                shown.append(line)
        return shown

    def serve(self, argv: list[str], command: Command) -> None:
        """``rtc-segment emulator``: a real process on a free port; compare its banner."""
        if "--port" in argv:
            index = argv.index("--port") + 1
            self.ports[argv[index]] = argv[index] = str(free_port())
        executable = shutil.which("rtc-segment", path=str(Path(sys.executable).parent))
        assert executable is not None, "the rtc-segment script is not installed"
        self.served = subprocess.Popen(
            [executable, *argv],
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.served.stdout is not None
        banner: list[str] = []
        while not banner or banner[-1] != "Ctrl-C stops it.":
            line = self.served.stdout.readline()
            assert line, "the emulator exited: " + "\n".join(banner)
            banner.append(line.rstrip("\n"))
        assert_output(banner, [self.real_ports(text) for text in command.expected], command.line)


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shell]:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("VOLC_ACCESSKEY", DEFAULT_CREDENTIALS.access_key_id)
    monkeypatch.setenv("VOLC_SECRETKEY", DEFAULT_CREDENTIALS.secret_access_key)
    monkeypatch.delenv("VOLC_SESSION_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # files the commands name are relative to it
    shell = Shell(tmp_path)
    yield shell
    shell.close()


def test_only_the_demo_transcript_is_trimmed() -> None:
    # Trimming exempts a transcript from the check: it is for output no run reproduces (the
    # demo's timings, ports and ten seconds of progress), not a way around a failing check.
    trimmed = [commands_of(block.code)[0].line for block in TRANSCRIPTS if is_trimmed(block)]
    assert trimmed == ["rtc-segment demo"]
    assert len(CHECKED_TRANSCRIPTS) >= 3


def run_transcript(block_code: str, shell: Shell) -> None:
    commands = commands_of(block_code)
    assert commands
    for command in commands:
        shell.run(command)


@pytest.mark.parametrize("block", CHECKED_TRANSCRIPTS, ids=ids(CHECKED_TRANSCRIPTS))
def test_transcript_matches_the_real_output(block: Block, shell: Shell) -> None:
    run_transcript(block.code, shell)


def test_a_wrong_transcript_fails(shell: Shell) -> None:
    # The checker itself: a changed line is caught.
    (block,) = [block for block in CHECKED_TRANSCRIPTS if "rtc-segment start" in block.code]
    wrong = block.code.replace('"ok":true', '"ok":false', 1)
    with pytest.raises(AssertionError):
        run_transcript(wrong, shell)


# -- the error table ---------------------------------------------------------------------


def error_table() -> list[list[str]]:
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    start = text.index("| HTTP status | error code | raises | retried |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def answer_cases(status_cell: str, code_cell: str) -> Iterator[tuple[int, str | None]]:
    """(HTTP status, error code or None) pairs that one row of the table describes."""
    statuses = [int(n) for n in re.findall(r"\b[1-5]\d\d\b", status_cell)] or [200, 400, 500]
    unknown = "SomethingNew"  # a code this library has never heard of
    codes: list[str | None] = []
    if code_cell.startswith("none"):
        codes.append(None)
    if re.search(r"\b(unknown|any other) code\b", code_cell):
        codes.append(unknown)
    if not codes:
        # Every code named; for "any code starting with `X`", one such code too.
        for match in re.finditer(r"(starting with )?`([A-Za-z.]+)`", code_cell):
            codes.append(f"{match[2]}.{unknown}" if match[1] else match[2])
    assert codes, f"no code in {code_cell!r}"
    for status in statuses:
        for code in codes:
            yield status, code


def answer(status: int, code: str | None) -> httpx.Response:
    if code is None and status >= 400:
        return httpx.Response(status, text="<html><body>Bad Gateway</body></html>")
    metadata: dict[str, Any] = {"RequestId": "req-1", "Action": "GetSegmentTask"}
    if code is not None:
        metadata["Error"] = {"Code": code, "Message": "from the table"}
    return httpx.Response(status, json={"ResponseMetadata": metadata, "Result": {}})


ERROR_ROWS = error_table()


def test_error_table_is_read() -> None:
    assert len(ERROR_ROWS) >= 12
    assert {row[2] for row in ERROR_ROWS} >= {
        "`ThrottledError`",
        "`TaskNotFoundError`",
        "`AuthenticationError`",
        "`InvalidParameterError`",
        "`ServerError`",
        "`ApiError`",
    }


async def raised_for(status: int, code: str | None) -> tuple[BaseException, int]:
    """What ``get_segment_task`` raises when every answer is ``answer(status, code)``, and
    how many requests it sent (``max_retries=2``)."""
    sent: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answer(status, code)

    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=httpx.MockTransport(reply),
        max_retries=2,
        backoff=Backoff.disabled(),
        qps=10_000,
    ) as client:
        with pytest.raises(rtc_segment.RtcSegmentError) as raised:
            await client.get_segment_task("app", "room", "task")
    return raised.value, len(sent)


@pytest.mark.parametrize("row", ERROR_ROWS, ids=[f"{row[0]} {row[1][:40]}" for row in ERROR_ROWS])
async def test_error_table_row_is_what_the_client_raises(row: list[str]) -> None:
    status_cell, code_cell, raises, retried = row
    expected = getattr(rtc_segment, raises.strip("`"))
    attempts = {"yes": 3, "no": 1}.get(retried, 2)  # "once, signed afresh" for InvalidTimestamp
    for status, code in answer_cases(status_cell, code_cell):
        error, sent = await raised_for(status, code)
        case = f"HTTP {status}, code {code!r}"
        assert type(error) is expected, case
        assert getattr(error, "attempts", None) == attempts == sent, case


# -- the README and the site --------------------------------------------------------------


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


def test_readme_is_a_landing_page_whose_links_work() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= README_LIMIT
    links = re.findall(r"\]\((?!https?:)([^)#]+)(?:#[^)]*)?\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


LAZY_PUBLIC_NAMES = ("RedisRateLimiter", "RedisLimiterStats", "OpenTelemetryHook")


def test_every_public_name_is_in_the_api_reference() -> None:
    reference = "".join(
        page.read_text(encoding="utf-8") for page in sorted((DOCS / "reference").glob("*.md"))
    )
    documented = set(re.findall(r"^::: (rtc_segment(?:\.testing)?\.\w+)$", reference, re.M))
    public = {f"rtc_segment.{name}" for name in rtc_segment.__all__ if name != "__version__"}
    # Public names of the extras resolve lazily and stay out of __all__ (a star import must
    # work without the extras), but are documented all the same.
    public |= {f"rtc_segment.{name}" for name in LAZY_PUBLIC_NAMES}
    public |= {f"rtc_segment.testing.{name}" for name in rtc_segment.testing.__all__}
    assert public - documented == set()
    assert documented - public == set()


def test_the_site_configuration_lists_every_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    in_nav = set(re.findall(r"^\s+- (?:[^:\n]+: )?([\w/-]+\.md)$", config, re.M))
    pages = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}
    assert pages - in_nav == set(), "pages missing from the nav of mkdocs.yml"
    assert "--strict" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_snippets_name_sections_that_exist() -> None:
    # mkdocs fails on a missing section too, but only where the docs extra is installed.
    for page in DOCS.rglob("*.md"):
        for included, section in re.findall(
            r'^--8<-- "([^":]+)(?::(\w+))?"$', page.read_text(), re.M
        ):
            text = (ROOT / included).read_text(encoding="utf-8")
            if section:
                assert f"--8<-- [start:{section}]" in text, (page, section)
                assert f"--8<-- [end:{section}]" in text, (page, section)


def test_json_in_the_pages_is_valid() -> None:
    for block in ALL_BLOCKS:
        if block.lang == "json":
            json.loads(block.code)


def test_a_transcripts_column_gaps_may_widen_but_its_words_and_numbers_may_not() -> None:
    expected = [" keys        5", " achieved ...  ceiling 60/s"]
    # A wider cell elsewhere in the table (the rate) pushes the column one space right.
    assert_output([" keys         5", " achieved 112.3/s  ceiling 60/s"], expected, "poll")
    with pytest.raises(AssertionError):
        assert_output([" keys         6", " achieved 1/s  ceiling 60/s"], expected, "poll")
    with pytest.raises(AssertionError):
        assert_output([" key s        5", " achieved 1/s  ceiling 60/s"], expected, "poll")
