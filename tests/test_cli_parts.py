"""The command line's parts without the network: input parsing, records, views, progress."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from _local_zone import local_zone
from rich.console import Console

from rtc_segment import ClientStats, TaskStatus
from rtc_segment._cli._inputs import BadLine, InputFormatError, KeyLine, read_keys
from rtc_segment._cli._progress import PlainProgress
from rtc_segment._cli._records import dumps, error_dict, task_record
from rtc_segment._cli._views import Tally, format_duration, summary_view, task_view
from rtc_segment._errors import TaskNotFoundError
from rtc_segment._models import (
    SegmentTask,
    StopReason,
    StorageConfig,
    StorageType,
    TaskKey,
    TosConfig,
)


def parse(text: str) -> list[KeyLine | BadLine]:
    return list(read_keys(io.StringIO(text)))


# -- input ------------------------------------------------------------------------------


def test_csv_with_header_yields_keys_with_their_line_numbers() -> None:
    items = parse("app_id,room_id,task_id\na,r1,t1\n\na,r2,t2\n")
    assert items == [KeyLine(2, TaskKey("a", "r1", "t1")), KeyLine(4, TaskKey("a", "r2", "t2"))]


def test_csv_columns_in_any_order_with_extra_columns_and_pascal_case_names() -> None:
    items = parse("note,TaskId,AppId,RoomId\nhello,t,a,r\n")
    assert items == [KeyLine(2, TaskKey("a", "r", "t"))]


def test_csv_malformed_lines_are_reported_and_the_rest_still_read() -> None:
    items = parse('app_id,room_id,task_id\na,r1\na,,t\n"a,r,t\na,r4,t4\n')
    assert [type(item) for item in items] == [BadLine, BadLine, BadLine, KeyLine]
    bad = [item for item in items if isinstance(item, BadLine)]
    assert [item.line for item in bad] == [2, 3, 4]
    assert "expected at least 3 fields, got 2" in bad[0].problem
    assert "empty room_id" in bad[1].problem
    assert "CSV" in bad[2].problem
    assert items[-1] == KeyLine(5, TaskKey("a", "r4", "t4"))


def test_csv_without_the_key_columns_is_a_format_error() -> None:
    with pytest.raises(InputFormatError, match="missing task_id"):
        parse("app_id,room_id\na,r\n")


def test_json_lines_with_bad_lines_in_between() -> None:
    text = (
        '{"app_id": "a", "room_id": "r", "task_id": "t"}\n'
        "{not json\n"
        "[1, 2]\n"
        '{"app_id": "a", "room_id": "r"}\n'
        '{"app_id": "a", "room_id": 7, "task_id": "t"}\n'
        '{"AppId": "b", "RoomId": "s", "TaskId": "u", "extra": 1}\n'
    )
    items = parse(text)
    assert items[0] == KeyLine(1, TaskKey("a", "r", "t"))
    assert items[-1] == KeyLine(6, TaskKey("b", "s", "u"))
    problems = {item.line: item.problem for item in items if isinstance(item, BadLine)}
    assert set(problems) == {2, 3, 4, 5}
    assert problems[2].startswith("not valid JSON")
    assert "expected a JSON object, got list" in problems[3]
    assert "missing task_id" in problems[4]
    assert "room_id must be a string, got int" in problems[5]


def test_reading_is_lazy() -> None:
    pulled = []

    def lines():  # type: ignore[no-untyped-def]
        for number in range(1_000_000):
            pulled.append(number)
            yield f'{{"app_id": "a", "room_id": "r{number}", "task_id": "t"}}\n'

    items = read_keys(lines())  # type: ignore[arg-type]
    assert next(items) == KeyLine(1, TaskKey("a", "r0", "t"))
    assert len(pulled) == 1


def test_empty_input_yields_nothing() -> None:
    assert parse("\n\n") == []


# -- records ----------------------------------------------------------------------------


def test_task_record_is_compact_json_with_status_name_and_snake_case_task() -> None:
    task = SegmentTask(start_time=1_700_000_000_000, status=TaskStatus.RUNNING)
    line = dumps(task_record(3, TaskKey("a", "r", "t"), task))
    record = json.loads(line)
    assert list(record)[:5] == ["line", "app_id", "room_id", "task_id", "status"]
    assert record["line"] == 3
    assert record["status"] == "RUNNING"
    assert record["task"]["status"] == 2
    assert record["task"]["started_at"] == "2023-11-14T22:13:20.000+00:00"
    assert "\n" not in line


def test_error_dict_of_an_api_error_carries_its_identifiers() -> None:
    error = TaskNotFoundError(
        "InvalidParameter.ErrorActiveTaskNotFound: no task",
        code="InvalidParameter.ErrorActiveTaskNotFound",
        http_status=400,
        request_id="req-1",
    )
    assert error_dict(error) == {
        "type": "TaskNotFoundError",
        "code": "InvalidParameter.ErrorActiveTaskNotFound",
        "message": "InvalidParameter.ErrorActiveTaskNotFound: no task",
        "http_status": 400,
        "request_id": "req-1",
        "attempts": 1,
    }


def test_error_dict_of_a_plain_exception() -> None:
    assert error_dict(ValueError("room_id='x y' is bad")) == {
        "type": "ValueError",
        "message": "room_id='x y' is bad",
    }


# -- views ------------------------------------------------------------------------------


def render(renderable: object, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=False)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (61, "1m 01s"), (3725, "1h 02m 05s"), (90000, "1d 01h 00m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_task_view_shows_times_in_utc_and_the_storage() -> None:
    task = SegmentTask(
        start_time=1_700_000_000_000,
        end_time=1_700_000_090_000,
        status=TaskStatus.ENDED,
        stop_reason=StopReason.IDLE_TIMEOUT,
        storage_config=StorageConfig(
            type=StorageType.TOS, tos_config=TosConfig(bucket="slices", region=0)
        ),
    )
    text = render(task_view(TaskKey("a", "r", "t"), task, now=datetime.now(UTC)))
    assert "ENDED" in text
    assert "IdleTimeOut" in text
    assert "2023-11-14 22:13:20 UTC" in text
    assert "1m 30s" in text
    assert "TOS: bucket slices" in text
    assert "every stream in the room" in text


def test_running_task_duration_counts_to_now() -> None:
    task = SegmentTask(start_time=1_700_000_000_000, status=TaskStatus.RUNNING)
    now = datetime.fromtimestamp(1_700_000_000 + 125, tz=UTC)
    assert "2m 05s so far" in render(task_view(TaskKey("a", "r", "t"), task, now=now))


def test_summary_lists_statuses_errors_and_the_achieved_rate() -> None:
    tally = Tally(qps=60.0, started=0.0, finished=10.0)
    for _ in range(3):
        tally.task(SegmentTask(status=TaskStatus.ENDED))
    tally.error("TaskNotFoundError")
    stats = ClientStats(requests_sent=600, retries=2, throttled=0)
    text = render(summary_view("poll", tally, stats))
    assert "ENDED" in text and "TaskNotFoundError" in text
    assert "60.0/s" in text
    assert "100%" in text
    assert tally.succeeded == 3 and tally.failed == 1


# -- progress ---------------------------------------------------------------------------


def test_plain_progress_prints_a_line_per_period_only() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = PlainProgress(
        Console(file=stream, force_terminal=False, width=200),
        10,
        lambda: ClientStats(throttled=0),
        "polling",
        every=2.0,
        clock=lambda: now[0],
    )
    for step in range(10):
        now[0] = step * 0.5
        progress.advance(failed=step == 0)
    progress.close()
    lines = stream.getvalue().splitlines()
    # 0.0 .. 4.5 s: a line at 2.0 s and 4.0 s, then the final line at close.
    assert len(lines) == 3
    assert lines[0].startswith("polling: 5/10 done")
    assert lines[-1].startswith("polling: 10/10 done")
    assert "errors 1" in lines[-1]


# -- local times (the suite also runs under TZ=Asia/Shanghai: nox -s tz) ---------------------


@pytest.mark.parametrize(
    ("zone", "start_ms", "local", "utc"),
    [
        ("Asia/Shanghai", 1_700_000_000_000, "2023-11-15 06:13:20 CST", "2023-11-14 22:13:20"),
        ("America/New_York", 1_700_000_000_000, "2023-11-14 17:13:20 EST", "2023-11-14 22:13:20"),
        # daylight saving time
        ("America/New_York", 1_688_212_800_000, "2023-07-01 08:00:00 EDT", "2023-07-01 12:00:00"),
    ],
)
def test_task_view_shows_local_time_and_utc(zone: str, start_ms: int, local: str, utc: str) -> None:
    task = SegmentTask(start_time=start_ms, end_time=start_ms + 90_000, status=TaskStatus.ENDED)
    with local_zone(zone):
        text = render(task_view(TaskKey("a", "r", "t"), task, now=datetime.now(UTC)))
    assert local in text
    assert f"({utc} UTC)" in text


def test_running_duration_counts_to_an_aware_non_utc_now() -> None:
    task = SegmentTask(start_time=1_700_000_000_000, status=TaskStatus.RUNNING)
    now = datetime.fromtimestamp(1_700_000_000 + 125, tz=ZoneInfo("Asia/Shanghai"))
    with local_zone("America/New_York"):
        assert "2m 05s so far" in render(task_view(TaskKey("a", "r", "t"), task, now=now))
