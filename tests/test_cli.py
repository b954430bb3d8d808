"""``rtc-segment`` end to end: every subcommand in process, against the emulator.

Most tests run the command with the emulator's in-process transport (no sockets); the demo
and the emulator subcommand go through the real loopback server.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest
from _cli_support import cli, use_emulator_credentials

from rtc_segment import SegmentClient, SegmentTask, TaskStatus
from rtc_segment._cli._context import Context
from rtc_segment._cli._demo import command_emulator
from rtc_segment._cli._parser import build_parser
from rtc_segment._cli._terminal import Terminal
from rtc_segment._converter import task_to_dict
from rtc_segment.cli import main
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Lifecycle


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The emulator's test credentials in the environment, and no ~/.volc file."""
    use_emulator_credentials(monkeypatch, tmp_path)


@pytest.fixture
def emulator() -> Emulator:
    emulator = Emulator()
    emulator.add_task("app", "r1", "t1", status=TaskStatus.RUNNING)
    emulator.add_task("app", "r2", "t2", status=TaskStatus.ENDED)
    emulator.add_task("app", "r3", "t3", status=TaskStatus.FAILED)
    return emulator


def fetch(emulator: Emulator, *key: str) -> SegmentTask:
    """The task as the library itself returns it."""

    async def get() -> SegmentTask:
        transport = emulator.transport()
        async with SegmentClient(DEFAULT_CREDENTIALS, transport=transport) as client:
            return await client.get_segment_task(*key)

    return asyncio.run(get())


def write(tmp_path: Path, text: str, name: str = "keys.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- get --------------------------------------------------------------------------------


def test_get_on_a_terminal_prints_a_readable_summary(emulator: Emulator) -> None:
    argv = ["get", "--app-id", "app", "--room-id", "r2", "--task-id", "t2"]
    result = cli(argv, transport=emulator.transport(), stdout_tty=True)
    assert result.status == 0
    assert "Status" in result.stdout and "ENDED" in result.stdout
    assert "UTC" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_get_in_a_pipe_prints_the_task_as_json(emulator: Emulator) -> None:
    argv = ["get", "--app-id", "app", "--room-id", "r1", "--task-id", "t1"]
    result = cli(argv, transport=emulator.transport())
    assert result.status == 0
    assert json.loads(result.stdout) == task_to_dict(fetch(emulator, "app", "r1", "t1"))
    assert len(result.stdout.splitlines()) == 1


def test_get_json_flag_on_a_terminal_is_indented_json(emulator: Emulator) -> None:
    argv = ["get", "--app-id", "app", "--room-id", "r1", "--task-id", "t1", "--json"]
    result = cli(argv, transport=emulator.transport(), stdout_tty=True)
    assert json.loads(result.stdout)["status"] == TaskStatus.RUNNING.value
    assert len(result.stdout.splitlines()) > 1


def test_get_unknown_task_exits_1_with_the_error(emulator: Emulator) -> None:
    argv = ["get", "--app-id", "app", "--room-id", "nope", "--task-id", "t"]
    result = cli(argv, transport=emulator.transport())
    assert result.status == 1
    assert "TaskNotFoundError" in result.records[0]["error"]["type"]  # type: ignore[index]
    assert "72 hours" in result.stderr  # the library's hint reaches the user


def test_get_invalid_id_is_a_usage_error_and_sends_nothing(emulator: Emulator) -> None:
    result = cli(
        ["get", "--app-id", "app", "--room-id", "bad room", "--task-id", "t"],
        transport=emulator.transport(),
    )
    assert result.status == 2
    assert "room_id" in result.stderr
    assert emulator.count() == 0


# -- credentials ------------------------------------------------------------------------


def test_missing_credentials_exit_2_naming_the_sources(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VOLC_ACCESSKEY")
    monkeypatch.delenv("VOLC_SECRETKEY")
    result = cli(
        ["get", "--app-id", "a", "--room-id", "r", "--task-id", "t"],
        transport=emulator.transport(),
    )
    assert result.status == 2
    assert "no credentials found" in result.stderr
    assert "VOLC_ACCESSKEY" in result.stderr and ".volc" in result.stderr
    assert result.stdout == ""


def test_access_key_flag_without_stdin_secret_is_refused(emulator: Emulator) -> None:
    argv = ["get", "--app-id", "a", "--room-id", "r", "--task-id", "t", "--access-key-id", "AK"]
    result = cli(argv, transport=emulator.transport())
    assert result.status == 2
    assert "--secret-key-stdin" in result.stderr


def test_secret_key_from_stdin_signs_and_is_never_printed(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VOLC_ACCESSKEY")
    monkeypatch.delenv("VOLC_SECRETKEY")
    secret = DEFAULT_CREDENTIALS.secret_access_key
    argv = ["get", "-v", "--app-id", "app", "--room-id", "r1", "--task-id", "t1"]
    argv += ["--access-key-id", DEFAULT_CREDENTIALS.access_key_id, "--secret-key-stdin"]
    result = cli(argv, transport=emulator.transport(), stdin=secret + "\n")
    assert result.status == 0, result.stderr
    assert "GetSegmentTask" in result.stderr  # -v logged the request
    assert secret not in result.stdout + result.stderr


def test_without_the_cli_extra_main_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # makes `import rich` fail
    assert main(["demo"]) == 2
    assert "pip install 'rtc-segment[cli]'" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["poll"]) == 2  # --input is required
    assert main(["poll", "--input", "x", "--qps", "0"]) == 2
    assert "--input" in capsys.readouterr().err


# -- poll -------------------------------------------------------------------------------


def test_poll_writes_one_valid_json_line_per_key_and_exits_0(
    emulator: Emulator, tmp_path: Path
) -> None:
    path = write(tmp_path, "app_id,room_id,task_id\napp,r1,t1\napp,r2,t2\napp,r3,t3\n")
    result = cli(["poll", "--input", path], transport=emulator.transport())
    assert result.status == 0, result.stderr
    by_line = {record["line"]: record for record in result.records}
    assert {line: record["status"] for line, record in by_line.items()} == {
        2: "RUNNING",
        3: "ENDED",
        4: "FAILED",
    }
    assert by_line[3]["room_id"] == "r2"
    assert emulator.count(action="GetSegmentTask") == 3
    assert "throttled" in result.stderr and "achieved" in result.stderr  # the summary


def test_poll_reports_malformed_lines_by_number_and_processes_the_rest(
    emulator: Emulator, tmp_path: Path
) -> None:
    text = (
        "app_id,room_id,task_id\n"
        "app,r1,t1\n"
        "app,r2\n"  # line 3: too few fields
        "app,bad room,t\n"  # line 4: invalid id (rejected by the client, nothing sent)
        "app,missing,t\n"  # line 5: not found
        "app,r3,t3\n"
    )
    result = cli(["poll", "--input", write(tmp_path, text)], transport=emulator.transport())
    assert result.status == 1
    records = {record["line"]: record for record in result.records}
    assert sorted(records) == [2, 3, 4, 5, 6]
    assert records[3]["error"]["type"] == "InputError"  # type: ignore[index]
    assert records[4]["error"]["type"] == "ValueError"  # type: ignore[index]
    assert records[5]["error"]["type"] == "TaskNotFoundError"  # type: ignore[index]
    assert records[2]["status"] == "RUNNING" and records[6]["status"] == "FAILED"
    assert "input line 3: expected at least 3 fields" in result.stderr
    assert "input line 4:" in result.stderr
    assert emulator.count(action="GetSegmentTask") == 3  # lines 2, 5 and 6


def test_poll_reads_json_lines_from_stdin(emulator: Emulator) -> None:
    lines = [json.dumps({"app_id": "app", "room_id": f"r{n}", "task_id": f"t{n}"}) for n in (1, 2)]
    result = cli(
        ["poll", "--input", "-"], transport=emulator.transport(), stdin="\n".join(lines) + "\n"
    )
    assert result.status == 0
    assert sorted(record["line"] for record in result.records) == [1, 2]


def test_poll_duplicate_keys_get_one_answer_per_line(emulator: Emulator, tmp_path: Path) -> None:
    path = write(tmp_path, "app_id,room_id,task_id\napp,r1,t1\napp,r1,t1\n")
    result = cli(["poll", "--input", path], transport=emulator.transport())
    assert sorted(record["line"] for record in result.records) == [2, 3]


def test_poll_bad_header_or_missing_file_is_a_usage_error(
    emulator: Emulator, tmp_path: Path
) -> None:
    bad = cli(["poll", "--input", write(tmp_path, "a,b\n1,2\n")], transport=emulator.transport())
    assert bad.status == 2 and "app_id,room_id,task_id" in bad.stderr
    gone = cli(["poll", "--input", str(tmp_path / "none.csv")], transport=emulator.transport())
    assert gone.status == 2 and "cannot read --input" in gone.stderr
    assert emulator.count() == 0


def test_poll_progress_bar_only_when_stderr_is_a_terminal(
    emulator: Emulator, tmp_path: Path
) -> None:
    path = write(tmp_path, "app_id,room_id,task_id\napp,r1,t1\napp,r2,t2\n")
    on_terminal = cli(["poll", "--input", path], transport=emulator.transport(), stderr_tty=True)
    piped = cli(["poll", "--input", path], transport=emulator.transport())
    assert "2/2" in on_terminal.stderr and "\x1b[" in on_terminal.stderr
    assert "2/2" not in piped.stderr and "\x1b[" not in piped.stderr
    # stdout stays pure JSON lines either way
    assert len(on_terminal.records) == len(piped.records) == 2


# -- watch ------------------------------------------------------------------------------


def test_watch_prints_each_change_until_every_task_ends(tmp_path: Path) -> None:
    emulator = Emulator()
    emulator.add_task("app", "r", "t", lifecycle=Lifecycle.after_reads(running=1, ended=3))
    emulator.add_task("app", "done", "t", status=TaskStatus.ENDED)
    path = write(tmp_path, "app_id,room_id,task_id\napp,r,t\napp,done,t\napp,gone,t\n")
    result = cli(
        ["watch", "--input", path, "--poll-interval", "0.01"], transport=emulator.transport()
    )
    assert result.status == 1  # app/gone/t was not found
    events = [(r["room_id"], r["event"], r.get("status"), r["final"]) for r in result.records]
    assert [event for event in events if event[0] == "r"] == [
        ("r", "state", "NOT_STARTED", False),
        ("r", "state", "RUNNING", False),
        ("r", "state", "ENDED", True),
    ]
    assert ("done", "state", "ENDED", True) in events
    assert ("gone", "error", None, True) in events
    assert "TaskNotFoundError" in result.stderr  # summary: errors by class


class InterruptAfter(httpx.AsyncBaseTransport):
    """Delivers to the emulator, and presses Ctrl-C (a real SIGINT) at request ``count``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, count: int) -> None:
        self.inner, self.count, self.seen = inner, count, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.seen == self.count:
            signal.raise_signal(signal.SIGINT)
        return await self.inner.handle_async_request(request)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT handling needs a Unix event loop")
def test_ctrl_c_during_watch_prints_the_summary_and_exits_130(
    emulator: Emulator, tmp_path: Path
) -> None:
    path = write(tmp_path, "app_id,room_id,task_id\napp,r1,t1\n")  # running forever
    transport = InterruptAfter(emulator.transport(), count=3)
    result = cli(["watch", "--input", path, "--poll-interval", "0.01"], transport=transport)
    assert result.status == 130
    assert [record["status"] for record in result.records] == ["RUNNING"]  # no change after
    assert "interrupted" in result.stderr and "unfinished" in result.stderr
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# -- emulator and demo (real loopback HTTP) ---------------------------------------------


class _Announcements(io.StringIO):
    """stdout that notices the emulator's URL."""

    def __init__(self) -> None:
        super().__init__()
        self.url: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def write(self, text: str) -> int:
        match = re.search(r"listening on (http://\S+)", text)
        if match and not self.url.done():
            self.url.set_result(match.group(1))
        return super().write(text)


async def test_emulator_command_serves_seeded_rooms_until_interrupted(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.csv"
    args = build_parser().parse_args(
        ["emulator", "--port", "0", "--rooms", "4", "--keys-out", str(keys_file)]
    )
    out, err = _Announcements(), io.StringIO()
    context = Context(terminal=Terminal.create(stdout=out, stderr=err, stdout_is_terminal=False))
    server = asyncio.ensure_future(command_emulator(args, context))
    url = await asyncio.wait_for(out.url, 10)
    assert f"VOLC_ACCESSKEY={DEFAULT_CREDENTIALS.access_key_id}" in out.getvalue()
    rows = keys_file.read_text().splitlines()
    assert rows[0] == "app_id,room_id,task_id" and len(rows) == 5
    async with SegmentClient(DEFAULT_CREDENTIALS, endpoint=url) as client:
        task = await client.get_segment_task(*rows[1].split(","))
    assert isinstance(task.status, TaskStatus)
    context.interrupt.set()
    assert await asyncio.wait_for(server, 10) == 0
    assert "stopped after 1 requests" in err.getvalue()


def test_demo_through_loopback_http_loses_nothing_and_is_never_throttled() -> None:
    result = cli(["demo", "--rooms", "30", "--watch", "1"])
    assert result.status == 0, result.stdout + result.stderr
    assert re.search(r"serving on http://127\.0\.0\.1:\d+, 30 rooms seeded", result.stdout)
    assert re.search(r"keys\s+30\b", result.stdout)
    assert re.search(r"throttled\s+0\b", result.stdout)
    assert re.search(r"lost\s+0\b", result.stdout)
    assert re.search(r"watched\s+1\s+1 ended", result.stdout)
    assert re.search(r"requests\s+30\b", result.stdout)  # one request per room: no retry
    assert "\x1b[" not in result.stdout  # not a terminal: no colour codes
