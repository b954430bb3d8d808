"""``rtc-segment start|update|stop`` in process, against the emulator's transport."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import httpx
import pytest
from _cli_support import cli, use_emulator_credentials

from rtc_segment import (
    SegmentClient,
    SegmentTask,
    StopReason,
    StorageType,
    StreamType,
    TaskStatus,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault

KEY = ["--app-id", "app", "--room-id", "room", "--task-id", "task"]
TOS = ["--account-id", "2100", "--bucket", "slices"]
STORAGE_SECRET = "storage-secret-from-stdin"


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The emulator's test credentials in the environment, and no ~/.volc file."""
    use_emulator_credentials(monkeypatch, tmp_path)


def fetch(emulator: Emulator) -> SegmentTask:
    """The task as the library reads it (a real GetSegmentTask)."""

    async def get() -> SegmentTask:
        async with SegmentClient(DEFAULT_CREDENTIALS, transport=emulator.transport()) as client:
            return await client.get_segment_task("app", "room", "task")

    return asyncio.run(get())


# -- start ----------------------------------------------------------------------------------


def test_start_in_a_pipe_prints_one_json_line_and_the_task_runs() -> None:
    emulator = Emulator()
    argv = ["start", *KEY, *TOS, "--duration", "30", "--max-idle-time", "600", "--no-handle"]
    argv += ["--identifier", "pre", "--stream", "0:alice", "--stream", "3:bob:screen"]
    argv += ["--mixed", "--redundant-duration", "2000", "--storage-region", "2"]
    result = cli(argv, emulator.transport())
    assert result.status == 0, result.stderr
    assert result.record == {
        "action": "StartSegment",
        "app_id": "app",
        "room_id": "room",
        "task_id": "task",
        "ok": True,
    }
    task = fetch(emulator)
    assert task.status is TaskStatus.RUNNING
    assert (task.duration, task.max_idle_time, task.handle, task.identifier) == (
        30,
        600,
        False,
        "pre",
    )
    assert task.target_streams is not None
    streams = [(s.index, s.user_id, s.stream_type) for s in task.target_streams.stream_list]
    assert streams == [(0, "alice", StreamType.NORMAL), (3, "bob", StreamType.SCREEN)]
    assert task.control is not None
    assert (task.control.mixed, task.control.align, task.control.redundant_duration) == (
        True,
        False,
        2000,
    )
    assert task.storage_config is not None and task.storage_config.tos_config is not None
    tos = task.storage_config.tos_config
    assert (tos.account_id, tos.bucket, tos.region) == ("2100", "slices", 2)


def test_start_on_a_terminal_prints_a_confirmation() -> None:
    emulator = Emulator()
    result = cli(["start", *KEY, *TOS], emulator.transport(), stdout_tty=True)
    assert result.status == 0
    assert "started app / room / task" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_start_json_flag_on_a_terminal_prints_the_json_line() -> None:
    emulator = Emulator()
    result = cli(["start", *KEY, *TOS, "--json"], emulator.transport(), stdout_tty=True)
    assert result.record["ok"] is True


@pytest.mark.parametrize(
    ("options", "kind", "where"),
    [
        (["--storage-type", "vod", "--account-id", "2100", "--space", "sp"], StorageType.VOD, "sp"),
        (
            ["--storage-type", "veimagex", "--account-id", "2100", "--service-id", "svc"],
            StorageType.VEIMAGEX,
            "svc",
        ),
    ],
)
def test_start_with_other_storage_types(options: list[str], kind: StorageType, where: str) -> None:
    emulator = Emulator()
    assert cli(["start", *KEY, *options], emulator.transport()).status == 0
    storage = fetch(emulator).storage_config
    assert storage is not None and storage.type is kind
    assert where in repr(storage)


def test_custom_storage_secret_comes_from_stdin_and_is_never_shown() -> None:
    emulator = Emulator()
    argv = ["start", "-v", *KEY, "--storage-type", "custom", "--vendor", "oss", "--bucket", "b"]
    argv += ["--custom-access-key", "AKSTORAGE", "--custom-secret-key-stdin"]
    result = cli(argv, emulator.transport(), stdin=STORAGE_SECRET + "\n")
    assert result.status == 0, result.stderr
    assert "StartSegment" in result.stderr  # -v logged the request...
    assert STORAGE_SECRET not in result.stdout + result.stderr  # ...but not the secret
    stored = emulator.task("app", "room", "task").task.storage_config
    assert stored is not None and stored.custom_config is not None
    assert stored.custom_config.secret_key == STORAGE_SECRET  # it reached the service
    assert stored.custom_config.vendor == 1


def test_api_secret_and_storage_secret_are_read_from_stdin_in_that_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VOLC_SECRETKEY")
    emulator = Emulator()
    argv = ["start", *KEY, "--storage-type", "custom", "--bucket", "b"]
    argv += ["--custom-access-key", "AKSTORAGE", "--custom-secret-key-stdin"]
    argv += ["--access-key-id", DEFAULT_CREDENTIALS.access_key_id, "--secret-key-stdin"]
    stdin = f"{DEFAULT_CREDENTIALS.secret_access_key}\n{STORAGE_SECRET}\n"
    result = cli(argv, emulator.transport(), stdin=stdin)
    assert result.status == 0, result.stderr
    stored = emulator.task("app", "room", "task").task.storage_config
    assert stored is not None and stored.custom_config is not None
    assert stored.custom_config.secret_key == STORAGE_SECRET


def test_custom_storage_without_a_secret_on_stdin_is_a_usage_error() -> None:
    emulator = Emulator()
    argv = ["start", *KEY, "--storage-type", "custom", "--bucket", "b"]
    argv += ["--custom-access-key", "AK", "--custom-secret-key-stdin"]
    result = cli(argv, emulator.transport(), stdin="")
    assert result.status == 2
    assert "--custom-secret-key-stdin" in result.stderr
    assert emulator.count() == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["start", *KEY], "needs --account-id --bucket"),
        (["start", *KEY, *TOS, "--space", "s"], "--space does not apply"),
        (["start", *KEY, "--storage-type", "custom", "--bucket", "b"], "--custom-access-key"),
        (["start", *KEY, *TOS, "--duration", "601"], "duration"),
        (["start", *KEY, *TOS, "--max-idle-time", "0"], "max_idle_time"),
        (["start", *KEY, *TOS, "--stream", "1:a", "--stream", "1:b"], "duplicate"),
        (["start", *KEY, *TOS, "--identifier", "a b"], "identifier"),
        (["start", "--app-id", "a", "--room-id", "bad room", "--task-id", "t", *TOS], "room_id"),
        (["update", *KEY], "at least one of"),
        (["update", *KEY, "--duration", "0"], "duration"),
        (["stop", *KEY, "--business-id", "b&c"], "business_id"),
    ],
)
def test_invalid_arguments_are_usage_errors_and_send_nothing(argv: list[str], message: str) -> None:
    emulator = Emulator()
    result = cli(argv, emulator.transport())
    assert result.status == 2, result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert emulator.count() == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["start", *KEY, *TOS, "--stream", "x:alice"],
        ["start", *KEY, *TOS, "--stream", "1:alice:webcam"],
        ["start", *KEY, *TOS, "--stream", "1"],
        ["start", *KEY, "--storage-type", "custom", "--vendor", "dropbox"],
        ["start", *KEY, *TOS, "--custom-secret-key", "value"],  # no such flag, by design
    ],
)
def test_malformed_options_are_rejected_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = Emulator()
    assert cli(argv, emulator.transport()).status == 2
    assert "usage:" in capsys.readouterr().err
    assert emulator.count() == 0


def test_start_of_a_running_task_exits_1_with_get_s_error_shape() -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "task")
    result = cli(["start", *KEY, *TOS], emulator.transport())
    assert result.status == 1
    record = result.record
    assert (record["action"], record["ok"]) == ("StartSegment", False)
    assert record["error"]["type"] == "InvalidParameterError"
    assert record["error"]["code"] == "InvalidParameter.TaskAlreadyExists"
    assert record["error"]["http_status"] == 400 and record["error"]["request_id"]
    assert "TaskAlreadyExists" in result.stderr


def test_an_ambiguous_start_says_so() -> None:
    emulator = Emulator()
    emulator.faults.next(1, Fault.DROP, action="StartSegment")
    emulator.faults.next(1, Fault.HTTP_500, action="GetSegmentTask")  # the check fails too
    result = cli(["start", *KEY, *TOS, "--max-retries", "0"], emulator.transport())
    assert result.status == 1
    assert result.record["error"]["ambiguous"] is True
    assert "may nevertheless have reached the service" in result.stderr


# -- update and stop --------------------------------------------------------------------------


def test_update_changes_the_running_task() -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "task", identifier="old")
    argv = ["update", *KEY, "--identifier", "new", "--no-handle", "--duration", "40"]
    result = cli(argv, emulator.transport())
    assert result.status == 0, result.stderr
    assert result.record == {
        "action": "UpdateSegment",
        "app_id": "app",
        "room_id": "room",
        "task_id": "task",
        "ok": True,
    }
    task = fetch(emulator)
    assert (task.identifier, task.handle, task.duration) == ("new", False, 40)
    assert cli(["update", *KEY, "--handle"], emulator.transport()).status == 0
    assert fetch(emulator).handle is True


def test_stop_ends_the_task_and_a_second_stop_exits_1() -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "task")
    first = cli(["stop", *KEY], emulator.transport(), stdout_tty=True)
    assert first.status == 0
    assert "stopped app / room / task" in first.stdout
    task = fetch(emulator)
    assert (task.status, task.stop_reason) == (TaskStatus.ENDED, StopReason.STOP_BY_API)
    second = cli(["stop", *KEY], emulator.transport())
    assert second.status == 1
    assert second.record["error"]["type"] == "TaskNotFoundError"
    assert second.record["ok"] is False


def test_update_of_a_missing_task_exits_1() -> None:
    emulator = Emulator()
    result = cli(["update", *KEY, "--duration", "30"], emulator.transport())
    assert result.status == 1
    assert result.record["error"]["code"] == "InvalidParameter.ErrorActiveTaskNotFound"


def test_stop_is_retried_on_503() -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "task")
    emulator.faults.next(1, Fault.HTTP_503, action="StopSegment")
    result = cli(["stop", *KEY], emulator.transport())
    assert result.status == 0, result.stderr
    assert emulator.count(action="StopSegment") == 2


class InterruptOnFirst(httpx.AsyncBaseTransport):
    """Presses Ctrl-C (a real SIGINT) as the first request goes out, then delivers it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.pressed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.pressed:
            self.pressed = True
            signal.raise_signal(signal.SIGINT)
        return await self.inner.handle_async_request(request)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT handling needs a Unix event loop")
def test_ctrl_c_during_a_start_exits_130_and_warns_it_may_have_landed() -> None:
    emulator = Emulator(latency=30.0)  # the answer would take 30 s
    result = cli(["start", *KEY, *TOS], InterruptOnFirst(emulator.transport()))
    assert result.status == 130
    assert "may have reached the service" in result.stderr
    assert result.stdout == ""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_api_version_2023_reports_a_start_of_a_running_task() -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "task", status=TaskStatus.RUNNING)
    result = cli(["start", *KEY, *TOS, "--api-version", "2023-11-01"], emulator.transport())
    assert result.status == 0, result.stderr
    assert result.record["ok"] is True
    assert result.record["already_running"] is True
    assert emulator.requests[-1].version == "2023-11-01"
    on_terminal = cli(
        ["start", *KEY, *TOS, "--api-version", "2023-11-01"], emulator.transport(), stdout_tty=True
    )
    assert "already running: app / room / task" in on_terminal.stdout


def test_an_unknown_api_version_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    emulator = Emulator()
    result = cli(["get", *KEY, "--api-version", "2099-01-01"], emulator.transport())
    assert result.status == 2
    assert "--api-version" in result.stderr + capsys.readouterr().err
    assert emulator.count() == 0
