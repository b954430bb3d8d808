"""Tests for rtc_segment._converter: JSON <-> models, strictness, error paths."""

from __future__ import annotations

import copy
import enum
import inspect
import json
import linecache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc_segment._converter import (
    ShapeError,
    converter,
    structure_metadata,
    structure_task,
    task_to_dict,
    unstructure,
)
from rtc_segment._models import (
    Control,
    CustomConfig,
    ResponseError,
    ResponseMetadata,
    SegmentTask,
    StopReason,
    StorageConfig,
    StorageType,
    Stream,
    StreamType,
    TargetStreams,
    TaskStatus,
    TosConfig,
    VeImageXConfig,
    Vendor,
    VodConfig,
)

# The 返回示例 (response example) of the GetSegmentTask documentation, verbatim; the
# parsing benchmark reads the same file.
DOCUMENTED_RESPONSE = (Path(__file__).parent / "data" / "documented_response.json").read_text(
    encoding="utf-8"
)


def example_task_json() -> dict[str, Any]:
    """A fresh copy of the example's SegmentTask object (tests mutate it)."""
    return json.loads(DOCUMENTED_RESPONSE)["Result"]["SegmentTask"]  # type: ignore[no-any-return]


def example_metadata_json() -> dict[str, Any]:
    return json.loads(DOCUMENTED_RESPONSE)["ResponseMetadata"]  # type: ignore[no-any-return]


def shape_error(fn: Any, obj: object) -> ShapeError:
    with pytest.raises(ShapeError) as info:
        fn(obj)
    return info.value


class TestDocumentedExample:
    def test_task_fields(self) -> None:
        task = structure_task(example_task_json())
        assert task.start_time == 1677477732000
        assert task.end_time == 0
        assert task.status is TaskStatus.RUNNING
        assert task.stop_reason is None  # "" = not stopped
        assert task.max_idle_time == 600
        assert task.duration == 40
        assert task.identifier == "getsegmenttask"
        assert task.handle is True
        assert task.target_streams == TargetStreams(
            (Stream(0, "user0", StreamType.NORMAL), Stream(1, "user1", StreamType.NORMAL))
        )
        assert isinstance(task.target_streams.stream_list, tuple)
        assert task.control == Control(align=True, mixed=True, ignore_silence=True,
                                       redundant_duration=3)  # fmt: skip
        storage = task.storage_config
        assert storage is not None
        assert storage.type is StorageType.TOS
        assert storage.tos_config == TosConfig("Your_AccountId", "Your_Bucket", 0)
        assert storage.vod_config == VodConfig(account_id=None, space=None, region=0)
        assert storage.veimagex_config == VeImageXConfig(region=0)
        assert storage.custom_config == CustomConfig(vendor=Vendor.AMAZON_S3, region=0)
        assert task.started_at is not None
        assert task.started_at.isoformat() == "2023-02-27T06:02:12+00:00"
        assert task.ended_at is None

    def test_metadata_fields(self) -> None:
        metadata = structure_metadata(example_metadata_json())
        assert metadata == ResponseMetadata(
            request_id="Your_RequestId",
            action="GetSegmentTask",
            version="2022-06-01",
            service="rtc",
            region="cn-north-1",
            error=None,
        )

    def test_round_trip_through_json(self) -> None:
        task = structure_task(example_task_json())
        assert structure_task(json.loads(json.dumps(unstructure(task)))) == task

    def test_unstructure_reproduces_the_example(self) -> None:
        original = example_task_json()
        produced = unstructure(structure_task(original))
        # The only key the example has that we do not echo is StopReason "" (= None).
        assert original.pop("StopReason") == ""
        assert produced == original

    def test_metadata_round_trip(self) -> None:
        assert unstructure(structure_metadata(example_metadata_json())) == example_metadata_json()


class TestLeniency:
    def test_unknown_fields_are_ignored_at_every_level(self) -> None:
        data = example_task_json()
        data["BrandNewField"] = {"Nested": [1, 2]}
        data["TargetStreams"]["Extra"] = 1
        data["TargetStreams"]["StreamList"][0]["Volume"] = 0.5
        data["Control"]["Future"] = True
        data["StorageConfig"]["TosConfig"]["Acl"] = "private"
        assert structure_task(data) == structure_task(example_task_json())

    def test_unknown_enum_values_are_kept_and_visible(self) -> None:
        data = example_task_json()
        data["Status"] = 9
        data["StopReason"] = "QuotaExceeded"
        data["TargetStreams"]["StreamList"][1]["StreamType"] = 5
        data["StorageConfig"]["Type"] = 7
        data["StorageConfig"]["CustomConfig"]["Vendor"] = 42
        task = structure_task(data)
        assert task.status == 9
        assert task.status.name == "UNRECOGNISED_9"
        assert not task.status.is_recognised
        assert isinstance(task.stop_reason, StopReason)
        assert task.stop_reason.value == "QuotaExceeded"
        assert task.target_streams is not None
        assert task.target_streams.stream_list[1].stream_type.value == 5
        assert task.storage_config is not None
        assert task.storage_config.type.value == 7
        assert task.storage_config.custom_config is not None
        assert task.storage_config.custom_config.vendor.value == 42
        # ... and they go back out unchanged.
        assert unstructure(task) == {**data, "StopReason": "QuotaExceeded"}

    def test_known_stop_reasons(self) -> None:
        for reason in StopReason:
            assert structure_task({"StopReason": reason.value}).stop_reason is reason

    def test_empty_object_gives_defaults(self) -> None:
        task = structure_task({})
        assert task == SegmentTask()
        assert task.target_streams is None
        assert task.control is None
        assert task.storage_config is None
        assert task.status is TaskStatus.UNKNOWN

    def test_missing_scalars_take_model_defaults(self) -> None:
        task = structure_task({"StorageConfig": {"CustomConfig": {}}, "Control": {}})
        assert task.storage_config == StorageConfig(custom_config=CustomConfig())
        assert task.control == Control(False, False, False, 0)

    def test_null_is_treated_like_missing(self) -> None:
        data = {key: None for key in example_task_json()}
        assert structure_task(data) == SegmentTask()
        nested = {
            "TargetStreams": {"StreamList": None},
            "Control": {"Align": None, "RedundantDuration": None},
            "StorageConfig": {"Type": None, "TosConfig": {"Bucket": None, "Region": None}},
        }
        assert structure_task(nested) == SegmentTask(
            target_streams=TargetStreams(),
            control=Control(),
            storage_config=StorageConfig(tos_config=TosConfig()),
        )
        assert structure_metadata({"RequestId": None, "Error": None}) == ResponseMetadata()

    def test_null_stream_in_list_is_rejected(self) -> None:
        error = shape_error(structure_task, {"TargetStreams": {"StreamList": [None]}})
        assert error.path == "SegmentTask.TargetStreams.StreamList[0]"

    def test_integral_float_is_accepted_as_int(self) -> None:
        task = structure_task({"StartTime": 1677477732000.0, "Status": 3.0})
        assert task.start_time == 1677477732000
        assert type(task.start_time) is int
        assert task.status is TaskStatus.ENDED

    def test_metadata_error(self) -> None:
        metadata = structure_metadata(
            {
                "RequestId": "r",
                "Error": {"Code": "InvalidParameter", "CodeN": 10003, "Message": "bad"},
            }
        )
        assert metadata.error == ResponseError("InvalidParameter", 10003, "bad")
        assert structure_metadata({"Error": {"Code": "X"}}).error == ResponseError(code="X")


# (JSON object, expected path, words expected in the problem)
BAD_TASKS: list[tuple[object, str, str]] = [
    ([], "SegmentTask", "expected object, got list"),
    ("x", "SegmentTask", "expected object, got str"),
    (None, "SegmentTask", "expected object, got NoneType"),
    ({"StartTime": "1677477732000"}, "SegmentTask.StartTime", "expected int, got str"),
    ({"EndTime": True}, "SegmentTask.EndTime", "expected int, got bool"),
    ({"MaxIdleTime": 1.5}, "SegmentTask.MaxIdleTime", "expected int, got float"),
    ({"Duration": float("nan")}, "SegmentTask.Duration", "expected int, got float"),
    ({"Duration": float("inf")}, "SegmentTask.Duration", "expected int, got float"),
    ({"StartTime": 2**63}, "SegmentTask.StartTime", "64-bit"),
    ({"Status": "2"}, "SegmentTask.Status", "expected int, got str"),
    ({"Status": False}, "SegmentTask.Status", "expected int, got bool"),
    ({"StopReason": 3}, "SegmentTask.StopReason", "expected str, got int"),
    ({"Identifier": 7}, "SegmentTask.Identifier", "expected str, got int"),
    ({"Handle": 1}, "SegmentTask.Handle", "expected bool, got int"),
    ({"Handle": "true"}, "SegmentTask.Handle", "expected bool, got str"),
    ({"TargetStreams": []}, "SegmentTask.TargetStreams", "expected object, got list"),
    ({"TargetStreams": {"StreamList": {}}}, "SegmentTask.TargetStreams.StreamList", "list"),
    ({"TargetStreams": {"StreamList": "ab"}}, "SegmentTask.TargetStreams.StreamList", "list"),
    (
        {"TargetStreams": {"StreamList": [{"Index": 0}, {"Index": "1"}]}},
        "SegmentTask.TargetStreams.StreamList[1].Index",
        "expected int, got str",
    ),
    (
        {"TargetStreams": {"StreamList": [{}, {}, {"UserId": 5}]}},
        "SegmentTask.TargetStreams.StreamList[2].UserId",
        "expected str, got int",
    ),
    (
        {"TargetStreams": {"StreamList": [{"StreamType": "screen"}]}},
        "SegmentTask.TargetStreams.StreamList[0].StreamType",
        "expected int",
    ),
    ({"Control": {"Align": "yes"}}, "SegmentTask.Control.Align", "expected bool"),
    ({"Control": {"RedundantDuration": []}}, "SegmentTask.Control.RedundantDuration", "int"),
    ({"StorageConfig": {"Type": "tos"}}, "SegmentTask.StorageConfig.Type", "expected int"),
    (
        {"StorageConfig": {"TosConfig": {"Region": "cn-beijing"}}},
        "SegmentTask.StorageConfig.TosConfig.Region",
        "expected int",
    ),
    (
        {"StorageConfig": {"VodConfig": {"Space": 1}}},
        "SegmentTask.StorageConfig.VodConfig.Space",
        "expected str",
    ),
    (
        {"StorageConfig": {"CustomConfig": {"Vendor": None, "Bucket": ["b"]}}},
        "SegmentTask.StorageConfig.CustomConfig.Bucket",
        "expected str",
    ),
    (
        {"StorageConfig": {"VeImageXConfig": {"ServiceId": {}}}},
        "SegmentTask.StorageConfig.VeImageXConfig.ServiceId",
        "expected str",
    ),
    ({"StorageConfig": {"VeImageXConfig": 3}}, "SegmentTask.StorageConfig.VeImageXConfig", "obj"),
]


class TestStrictness:
    @pytest.mark.parametrize(("data", "path", "problem"), BAD_TASKS)
    def test_wrong_types_name_the_path(self, data: object, path: str, problem: str) -> None:
        error = shape_error(structure_task, data)
        assert error.path == path
        assert problem in error.problem
        assert str(error) == f"{path}: {error.problem}"
        assert isinstance(error, ValueError)

    def test_first_bad_field_of_the_example_is_reported(self) -> None:
        data = example_task_json()
        data["TargetStreams"]["StreamList"][1]["Index"] = "1"
        error = shape_error(structure_task, data)
        assert str(error) == (
            "SegmentTask.TargetStreams.StreamList[1].Index: expected int, got str '1'"
        )

    @pytest.mark.parametrize(
        ("data", "path"),
        [
            ([], "ResponseMetadata"),
            ({"RequestId": 1}, "ResponseMetadata.RequestId"),
            ({"Region": False}, "ResponseMetadata.Region"),
            ({"Error": "oops"}, "ResponseMetadata.Error"),
            ({"Error": {"CodeN": "10003"}}, "ResponseMetadata.Error.CodeN"),
            ({"Error": {"Code": 10003}}, "ResponseMetadata.Error.Code"),
            ({"Error": {"Message": None, "CodeN": True}}, "ResponseMetadata.Error.CodeN"),
        ],
    )
    def test_metadata_paths(self, data: object, path: str) -> None:
        assert shape_error(structure_metadata, data).path == path

    def test_huge_values_are_truncated(self) -> None:
        huge = "x" * 100_000
        for data in (
            {"Handle": huge},
            {"Handle": [huge] * 1000},
            {"Handle": {huge: huge}},
            {"StartTime": 10**5000},
            {"Handle": 1e308},
        ):
            message = str(shape_error(structure_task, data))
            assert len(message) < 160, message

    def test_deeply_nested_value_does_not_overflow(self) -> None:
        deep: Any = []
        for _ in range(100_000):
            deep = [deep]
        error = shape_error(structure_task, {"Control": {"Mixed": deep}})
        assert error.path == "SegmentTask.Control.Mixed"

    def test_secret_values_are_never_echoed(self) -> None:
        for field in ("AccessKey", "SecretKey"):
            data = {"StorageConfig": {"CustomConfig": {field: 1234567890123}}}
            error = shape_error(structure_task, data)
            assert error.path == f"SegmentTask.StorageConfig.CustomConfig.{field}"
            assert "1234567890123" not in str(error)

    def test_str_subclass_and_int_enum_inputs_are_accepted(self) -> None:
        class Name(str):
            pass

        task = structure_task({"Identifier": Name("n"), "Status": TaskStatus.ENDED})
        assert task.identifier == "n"
        assert task.status is TaskStatus.ENDED


class TestConverterObject:
    def test_registered_hooks_raise_shape_error_with_class_root(self) -> None:
        assert converter.structure({"Index": 2, "UserId": "u"}, Stream) == Stream(2, "u")
        with pytest.raises(ShapeError, match=r"^Stream\.Index: expected int"):
            converter.structure({"Index": "2"}, Stream)

    def test_converter_structure_matches_structure_task(self) -> None:
        data = example_task_json()
        assert converter.structure(data, SegmentTask) == structure_task(data)

    def test_converter_unstructure_matches_unstructure(self) -> None:
        task = structure_task(example_task_json())
        assert converter.unstructure(task) == unstructure(task)


class TestUnstructure:
    def test_none_fields_are_omitted(self) -> None:
        assert unstructure(SegmentTask()) == {"StartTime": 0, "EndTime": 0, "Status": 0}
        assert unstructure(TosConfig(bucket="b")) == {"Bucket": "b", "Region": 0}

    def test_irregular_names(self) -> None:
        storage = StorageConfig(type=StorageType.VEIMAGEX, veimagex_config=VeImageXConfig("a"))
        assert unstructure(storage) == {
            "Type": 3,
            "VeImageXConfig": {"AccountId": "a", "Region": 0},
        }
        error = ResponseError("Code", 100, "m")
        assert unstructure(error) == {"Code": "Code", "CodeN": 100, "Message": "m"}

    def test_custom_config_keys_are_included_when_set(self) -> None:
        config = CustomConfig(Vendor.TENCENT_COS, 3, "bkt", access_key="AK", secret_key="SK")
        assert unstructure(config) == {
            "Vendor": 3,
            "Region": 3,
            "Bucket": "bkt",
            "AccessKey": "AK",
            "SecretKey": "SK",
        }

    def test_enums_become_raw_values_and_tuples_lists(self) -> None:
        task = SegmentTask(
            status=TaskStatus(11),
            stop_reason=StopReason.IDLE_TIMEOUT,
            target_streams=TargetStreams((Stream(0, "a", StreamType.SCREEN),)),
        )
        produced = unstructure(task)
        assert type(produced["Status"]) is int
        assert produced["Status"] == 11
        assert produced["StopReason"] == "IdleTimeOut"
        assert type(produced["StopReason"]) is str
        assert produced["TargetStreams"] == {
            "StreamList": [{"Index": 0, "UserId": "a", "StreamType": 1}]
        }
        assert json.loads(json.dumps(produced)) == produced

    def test_non_model_is_a_type_error(self) -> None:
        with pytest.raises(TypeError):
            unstructure({"StartTime": 1})


class TestTaskToDict:
    def test_json_serialisable_with_stable_key_order(self) -> None:
        full = task_to_dict(structure_task(example_task_json()))
        empty = task_to_dict(SegmentTask())
        expected_keys = [
            "start_time",
            "end_time",
            "started_at",
            "ended_at",
            "status",
            "stop_reason",
            "max_idle_time",
            "target_streams",
            "duration",
            "identifier",
            "handle",
            "control",
            "storage_config",
        ]
        assert list(full) == expected_keys
        assert list(empty) == expected_keys
        text = json.dumps(full)
        assert json.loads(text) == full
        assert json.dumps(task_to_dict(structure_task(example_task_json()))) == text

    def test_values(self) -> None:
        task = SegmentTask(
            start_time=1677477732123,
            end_time=1677477792000,
            status=TaskStatus(12),
            stop_reason=StopReason.STOP_BY_API,
            target_streams=TargetStreams((Stream(1, "u", StreamType.SCREEN),)),
        )
        result = task_to_dict(task)
        assert result["started_at"] == "2023-02-27T06:02:12.123+00:00"
        assert result["ended_at"] == "2023-02-27T06:03:12.000+00:00"
        assert result["status"] == 12
        assert result["stop_reason"] == "StopByAPI"
        assert result["target_streams"] == {
            "stream_list": [{"index": 1, "user_id": "u", "stream_type": 1}]
        }
        assert result["control"] is None
        assert task_to_dict(SegmentTask())["started_at"] is None

    def test_storage_keys_are_redacted(self) -> None:
        storage = StorageConfig(custom_config=CustomConfig(access_key="AKX", secret_key="SKX"))
        text = json.dumps(task_to_dict(SegmentTask(storage_config=storage)))
        assert "AKX" not in text
        assert "SKX" not in text
        custom = task_to_dict(SegmentTask(storage_config=storage))["storage_config"]
        assert custom["custom_config"]["secret_key"] == "***"


# ----------------------------------------------------------------------------- properties

FIELD_NAMES = [
    "StartTime", "EndTime", "Status", "StopReason", "MaxIdleTime", "TargetStreams",
    "StreamList", "Index", "UserId", "StreamType", "Duration", "Identifier", "Handle",
    "Control", "Align", "Mixed", "IgnoreSilence", "RedundantDuration", "StorageConfig",
    "Type", "TosConfig", "AccountId", "Bucket", "Region", "VodConfig", "Space",
    "CustomConfig", "Vendor", "AccessKey", "SecretKey", "VeImageXConfig", "ServiceId",
    "RequestId", "Action", "Version", "Service", "Error", "Code", "CodeN", "Message",
]  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)
json_objects = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(max_size=8), json_values, max_size=12
)


def parse_or_error(fn: Any, value: object) -> object:
    try:
        return fn(value)
    except ShapeError as error:
        return error


@settings(max_examples=400)
@given(json_objects | json_values)
def test_arbitrary_json_either_parses_or_raises_shape_error(value: object) -> None:
    snapshot = copy.deepcopy(value)
    for fn, model in ((structure_task, SegmentTask), (structure_metadata, ResponseMetadata)):
        result = parse_or_error(fn, value)  # any other exception fails the test
        if isinstance(result, ShapeError):
            assert result.path.startswith(model.__name__)
            assert len(str(result)) < 300
        else:
            assert isinstance(result, model)
    assert value == snapshot or value != value  # never mutated (NaN != NaN)


int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
text = st.text(max_size=20)


def open_int_enum(cls: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(list(cls)) | st.integers(min_value=0, max_value=2**31).map(cls)


stop_reasons = st.sampled_from(list(StopReason)) | st.text(min_size=1).map(StopReason)
streams = st.builds(Stream, int64, text, open_int_enum(StreamType))
storage_configs = st.builds(
    StorageConfig,
    open_int_enum(StorageType),
    st.none() | st.builds(TosConfig, st.none() | text, st.none() | text, int64),
    st.none() | st.builds(VodConfig, st.none() | text, st.none() | text, int64),
    st.none()
    | st.builds(
        CustomConfig,
        open_int_enum(Vendor),
        int64,
        st.none() | text,
        st.none() | text,
        st.none() | text,
    ),
    st.none() | st.builds(VeImageXConfig, st.none() | text, st.none() | text, int64),
)
tasks = st.builds(
    SegmentTask,
    start_time=int64,
    end_time=int64,
    status=open_int_enum(TaskStatus),
    stop_reason=st.none() | stop_reasons,
    max_idle_time=st.none() | int64,
    target_streams=st.none() | st.builds(TargetStreams, st.lists(streams, max_size=4).map(tuple)),
    duration=st.none() | int64,
    identifier=st.none() | text,
    handle=st.none() | st.booleans(),
    control=st.none() | st.builds(Control, st.booleans(), st.booleans(), st.booleans(), int64),
    storage_config=st.none() | storage_configs,
)


@given(tasks)
def test_generated_tasks_round_trip(task: SegmentTask) -> None:
    produced = unstructure(task)
    assert structure_task(json.loads(json.dumps(produced))) == task
    assert structure_task(produced) == task
    json.dumps(task_to_dict(task))


@given(st.builds(ResponseMetadata, text, text, text, text, text,
                 st.none() | st.builds(ResponseError, text, st.none() | int64, text)))  # fmt: skip
def test_generated_metadata_round_trips(metadata: ResponseMetadata) -> None:
    assert structure_metadata(json.loads(json.dumps(unstructure(metadata)))) == metadata


# --- what mutation testing found untested (docs/testing.md#mutation-testing) -------------


def _problem(data: dict[str, Any]) -> str:
    return shape_error(structure_task, data).problem


@pytest.mark.parametrize(
    ("value", "described"),
    [
        # 58 characters quote to exactly 60: shown whole; 59 to 61: cut to 60 and "…"
        ("a" * 58, repr("a" * 58)),
        ("a" * 59, repr("a" * 59)[:60] + "…"),
        # over 60 characters: the first 60, quoted, then "…"
        ("a" * 60, repr("a" * 60)[:60] + "…"),
        ("a" * 61, repr("a" * 60) + "…"),
        (1.5, "1.5"),
        (object(), "object"),
        ({1, 2}, "object"),
    ],
)
def test_a_wrong_value_is_described_by_type_and_a_short_repr(value: object, described: str) -> None:
    problem = _problem({"StartTime": value})
    assert problem == f"expected int, got {type(value).__name__} {described}"


def test_a_null_list_element_is_described_as_none() -> None:
    error = shape_error(structure_task, {"TargetStreams": {"StreamList": [{"Index": 0}, None]}})
    assert error.path == "SegmentTask.TargetStreams.StreamList[1]"
    assert error.problem == "expected object, got NoneType None"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (2**63, "expected a 64-bit int, got int 9223372036854775808"),  # 64 bits: still shown
        (-(2**63) - 1, "expected a 64-bit int, got int -9223372036854775809"),
        (2**64, "expected a 64-bit int, got int of 65 bits"),  # wider: only its size
        (float(2**64), "expected a 64-bit int, got int of 65 bits"),
    ],
)
def test_ints_beyond_64_bits_are_refused(value: object, problem: str) -> None:
    assert _problem({"Duration": value}) == problem


def test_the_64_bit_bounds_are_inclusive_whatever_the_int_type() -> None:
    class Wide(enum.IntEnum):
        LEAST = -(2**63)
        MOST = 2**63 - 1

    assert structure_task({"Duration": Wide.MOST}).duration == 2**63 - 1
    assert structure_task({"Duration": Wide.LEAST}).duration == -(2**63)
    assert structure_task({"Duration": float(-(2**63))}).duration == -(2**63)


def test_a_misplaced_secret_is_named_by_type_only() -> None:
    error = shape_error(structure_task, {"StorageConfig": {"CustomConfig": {"SecretKey": 12}}})
    assert error.problem == "expected str, got int"


def test_shape_errors_of_metadata_carry_the_problem() -> None:
    error = shape_error(structure_metadata, {"RequestId": 7})
    assert error.path == "ResponseMetadata.RequestId"
    assert error.problem == "expected str, got int 7"
    assert str(error) == "ResponseMetadata.RequestId: expected str, got int 7"


def test_unstructure_refuses_what_is_not_a_model_naming_its_type() -> None:
    with pytest.raises(TypeError, match=r"^not a model instance: dict$"):
        unstructure({"Status": 1})


def test_the_generated_structuring_code_can_be_read_where_it_fails() -> None:
    # Tracebacks through the generated functions show their lines (linecache has them).
    from rtc_segment._converter import _structure_fns

    function = _structure_fns[Stream]
    source = inspect.getsource(function)
    assert source.startswith("def structure_Stream(o):\n  if type(o) is not dict:\n")
    first_line = linecache.getline(function.__code__.co_filename, 1)
    assert first_line == "def structure_Stream(o):\n"


def test_a_stream_list_that_is_not_a_list_is_described() -> None:
    error = shape_error(structure_task, {"TargetStreams": {"StreamList": "abc"}})
    assert error.path == "SegmentTask.TargetStreams.StreamList"
    assert error.problem == "expected list, got str 'abc'"
