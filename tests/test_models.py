"""Tests for rtc_segment._models: open enums, times, immutability, redaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
from _local_zone import local_zone

from rtc_segment._models import (
    Control,
    CustomConfig,
    SegmentTask,
    StopReason,
    StorageType,
    Stream,
    StreamType,
    TaskKey,
    TaskOutcome,
    TaskStatus,
    Vendor,
)

OPEN_INT_ENUMS = [TaskStatus, StreamType, StorageType, Vendor]


class TestOpenEnums:
    @pytest.mark.parametrize("cls", OPEN_INT_ENUMS)
    def test_unknown_int_becomes_unrecognised_member(self, cls: Any) -> None:
        member = cls(917)
        assert isinstance(member, cls)
        assert member.value == 917
        assert member == 917
        assert member.name == "UNRECOGNISED_917"
        assert not member.is_recognised

    @pytest.mark.parametrize("cls", OPEN_INT_ENUMS)
    def test_known_members_are_recognised(self, cls: Any) -> None:
        assert all(member.is_recognised for member in cls)

    @pytest.mark.parametrize("cls", OPEN_INT_ENUMS)
    def test_repeated_lookup_returns_the_same_object(self, cls: Any) -> None:
        assert cls(4242) is cls(4242)
        assert cls(4242) is not cls(4243)

    def test_unrecognised_members_are_not_listed(self) -> None:
        TaskStatus(77)
        assert TaskStatus(77) not in list(TaskStatus)
        assert "UNRECOGNISED_77" not in TaskStatus.__members__

    def test_unknown_stop_reason_string(self) -> None:
        reason = StopReason("QuotaExceeded")
        assert isinstance(reason, StopReason)
        assert reason.value == "QuotaExceeded"
        assert reason == "QuotaExceeded"
        assert not reason.is_recognised
        assert StopReason("QuotaExceeded") is reason
        assert StopReason("StopByAPI") is StopReason.STOP_BY_API
        assert StopReason.STOP_BY_API.is_recognised

    @pytest.mark.parametrize("value", ["2", 2.5, None])
    def test_int_enum_rejects_non_ints(self, value: Any) -> None:
        with pytest.raises(ValueError, match="TaskStatus"):
            TaskStatus(value)

    def test_stop_reason_rejects_non_strings(self) -> None:
        with pytest.raises(ValueError, match="StopReason"):
            StopReason(3)

    @pytest.mark.parametrize(
        ("status", "terminal"),
        [
            (TaskStatus.UNKNOWN, False),
            (TaskStatus.NOT_STARTED, False),
            (TaskStatus.RUNNING, False),
            (TaskStatus.ENDED, True),
            (TaskStatus.FAILED, True),
            (TaskStatus(9), False),
        ],
    )
    def test_is_terminal(self, status: TaskStatus, terminal: bool) -> None:
        assert status.is_terminal is terminal
        assert SegmentTask(status=status).is_terminal is terminal


class TestTimes:
    def test_zero_means_unset(self) -> None:
        task = SegmentTask(start_time=0, end_time=0)
        assert task.started_at is None
        assert task.ended_at is None

    def test_negative_means_unset(self) -> None:
        assert SegmentTask(start_time=-5).started_at is None

    def test_milliseconds_are_kept_and_time_is_utc(self) -> None:
        task = SegmentTask(start_time=1677477732123, end_time=1677477792000)
        started = task.started_at
        assert started == datetime(2023, 2, 27, 6, 2, 12, 123000, tzinfo=UTC)
        assert started is not None
        assert started.utcoffset() == timedelta(0)
        assert task.ended_at == datetime(2023, 2, 27, 6, 3, 12, tzinfo=UTC)

    def test_times_beyond_datetime_range_are_none_not_errors(self) -> None:
        task = SegmentTask(start_time=253402300799999, end_time=2**62)
        assert task.started_at == datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
        assert task.ended_at is None
        assert task.end_time == 2**62

    def test_millisecond_precision_is_exact(self) -> None:
        for ms in (1, 999, 1677477732001, 1677477732999, 4102444800123):
            started = SegmentTask(start_time=ms).started_at
            assert started is not None
            assert started.microsecond == ms % 1000 * 1000

    def test_running_task_has_no_end(self) -> None:
        task = SegmentTask(start_time=1677477732000, end_time=0, status=TaskStatus.RUNNING)
        assert task.started_at is not None
        assert task.ended_at is None


class TestImmutability:
    @pytest.mark.parametrize(
        ("instance", "attribute", "value"),
        [
            (SegmentTask(), "status", TaskStatus.ENDED),
            (Stream(), "index", 3),
            (Control(), "align", True),
            (CustomConfig(), "secret_key", "x"),
        ],
    )
    def test_assignment_raises(self, instance: object, attribute: str, value: object) -> None:
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(instance, attribute, value)

    def test_models_are_hashable_and_compare_by_value(self) -> None:
        assert hash(Stream(1, "u")) == hash(Stream(1, "u"))
        assert {SegmentTask(start_time=1), SegmentTask(start_time=1)} == {SegmentTask(start_time=1)}


class TestCustomConfigRedaction:
    def test_keys_never_appear_in_repr_or_str(self) -> None:
        config = CustomConfig(
            vendor=Vendor.ALIBABA_OSS,
            bucket="bkt",
            access_key="AKIDVERYSECRETKEY",
            secret_key="s3cr3t-value",
        )
        for text in (repr(config), str(config), repr(SegmentTask(identifier=repr(config)))):
            assert "AKIDVERYSECRETKEY" not in text
            assert "s3cr3t-value" not in text
        assert "access_key='***'" in repr(config)
        assert "secret_key='***'" in repr(config)
        assert "bucket='bkt'" in repr(config)

    def test_unset_keys_show_none(self) -> None:
        text = repr(CustomConfig())
        assert "access_key=None" in text
        assert "secret_key=None" in text

    def test_keys_still_compare(self) -> None:
        assert CustomConfig(secret_key="a") != CustomConfig(secret_key="b")


class TestTaskOutcome:
    key = TaskKey("app", "room", "task")

    def test_ok_with_task(self) -> None:
        outcome = TaskOutcome(self.key, task=SegmentTask())
        assert outcome.ok

    def test_not_ok_with_error(self) -> None:
        outcome = TaskOutcome(self.key, error=RuntimeError("boom"))
        assert not outcome.ok
        assert outcome.task is None

    def test_task_key_is_a_plain_tuple(self) -> None:
        assert self.key == ("app", "room", "task")
        assert self.key.room_id == "room"


# --- local time zones (the suite also runs under TZ=Asia/Shanghai: nox -s tz) -------------


@pytest.mark.parametrize("zone", ["UTC", "Asia/Shanghai", "America/New_York"])
def test_task_datetimes_are_utc_instants_whatever_the_local_zone(zone: str) -> None:
    task = SegmentTask(start_time=1_688_212_800_123, end_time=1_700_000_000_000)
    with local_zone(zone):
        started, ended = task.started_at, task.ended_at
    assert started is not None and ended is not None
    assert started.utcoffset() == timedelta(0)
    assert started.isoformat() == "2023-07-01T12:00:00.123000+00:00"
    # the same instants as aware datetimes in other zones
    assert started == datetime(2023, 7, 1, 8, 0, 0, 123_000, tzinfo=ZoneInfo("America/New_York"))
    assert ended == datetime(2023, 11, 15, 6, 13, 20, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert ended - started == timedelta(milliseconds=1_700_000_000_000 - 1_688_212_800_123)
