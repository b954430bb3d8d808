"""Tests for rtc_segment._validation: every check names the argument and refuses bools."""

from __future__ import annotations

import math

import pytest

from rtc_segment import TaskKey
from rtc_segment._validation import (
    check_bool,
    check_int,
    check_number,
    task_key,
    validate_id,
    validate_key,
)


@pytest.mark.parametrize("good", ["a", "A-z_0.9@x", "x" * 128])
def test_valid_ids_pass_unchanged(good: str) -> None:
    assert validate_id("task_id", good) == good


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (None, TypeError),
        (b"a", TypeError),
        ("", ValueError),
        ("a b", ValueError),
        ("x" * 129, ValueError),
        ("é", ValueError),
    ],
)
def test_invalid_ids_name_the_argument(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="room_id"):
        validate_id("room_id", bad)


def test_a_long_invalid_id_is_shortened_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"task_id='!{40}\.\.\.'") as caught:
        validate_id("task_id", "!" * 500)
    assert len(str(caught.value)) < 200


def test_task_key_checks_each_id_by_name() -> None:
    assert task_key("a", "r", "t") == TaskKey("a", "r", "t")
    with pytest.raises(ValueError, match="room_id"):
        task_key("a", "", "t")
    with pytest.raises(TypeError, match="task_id"):
        task_key("a", "r", 7)


def test_validate_key_takes_tuples_and_refuses_other_shapes() -> None:
    assert validate_key(("a", "r", "t")) == TaskKey("a", "r", "t")
    assert isinstance(validate_key(("a", "r", "t")), TaskKey)
    for bad in (["a", "r", "t"], ("a", "r"), "art"):
        with pytest.raises(TypeError, match="task key"):
            validate_key(bad)


@pytest.mark.parametrize("bad", [True, "1", None, [1]])
def test_numbers_refuse_non_numbers_and_bools(bad: object) -> None:
    with pytest.raises(TypeError, match="qps"):
        check_number("qps", bad)
    with pytest.raises(ValueError, match="timeout"):
        check_number("timeout", bad, type_error=ValueError)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_numbers_must_be_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        check_number("deadline", bad)


def test_number_bounds() -> None:
    assert check_number("x", 3) == 3.0
    assert isinstance(check_number("x", 3), float)
    assert check_number("x", 0, minimum=0) == 0.0
    with pytest.raises(ValueError, match="positive"):
        check_number("x", 0, positive=True)
    with pytest.raises(ValueError, match=">= 1"):
        check_number("x", 0.5, minimum=1)
    with pytest.raises(ValueError, match="<= 2"):
        check_number("x", 2.5, maximum=2)


def test_int_bounds_and_types() -> None:
    assert check_int("n", 5, minimum=1, maximum=5) == 5
    with pytest.raises(ValueError, match="between 1 and 5"):
        check_int("n", 6, minimum=1, maximum=5)
    with pytest.raises(ValueError, match=">= 1"):
        check_int("n", 0, minimum=1)
    with pytest.raises(ValueError, match="<= 3"):
        check_int("n", 4, maximum=3)
    for bad in (True, 1.0, "1"):
        with pytest.raises(TypeError, match="n must be an int"):
            check_int("n", bad)


def test_bools_must_be_bools() -> None:
    assert check_bool("handle", False) is False
    with pytest.raises(TypeError, match="handle"):
        check_bool("handle", 1)


# --- what mutation testing found untested (docs/testing.md#mutation-testing) -------------


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (lambda v: validate_id("room_id", v), b"a", "room_id must be a str, not bytes"),
        (validate_key, ["a", "r", "t"], "not list"),
        (lambda v: check_number("qps", v), "1", "qps must be a number, not str"),
        (lambda v: check_int("n", v), 1.0, "n must be an int, not float"),
        (lambda v: check_bool("handle", v), 1, "handle must be a bool, not int"),
    ],
)
def test_type_errors_name_the_type_given(check: object, value: object, message: str) -> None:
    assert callable(check)
    with pytest.raises(TypeError) as caught:
        check(value)
    assert message in str(caught.value)


@pytest.mark.parametrize("length", [1, 39, 40])
def test_an_invalid_id_up_to_40_characters_is_shown_whole(length: int) -> None:
    with pytest.raises(ValueError, match="is not a valid id") as caught:
        validate_id("task_id", "!" * length)
    assert f"task_id={'!' * length!r} is not" in str(caught.value)


def test_an_invalid_id_of_41_characters_is_shortened() -> None:
    with pytest.raises(ValueError, match=r"task_id='!{40}\.\.\.' is not"):
        validate_id("task_id", "!" * 41)


@pytest.mark.parametrize(("position", "named"), list(enumerate(["app_id", "room_id", "task_id"])))
def test_task_key_names_exactly_the_bad_argument(position: int, named: str) -> None:
    invalid = ["a", "r", "t"]
    invalid[position] = "has space"
    with pytest.raises(ValueError, match=rf"^{named}='has space' is not a valid id"):
        task_key(*invalid)
    wrong_type: list[object] = ["a", "r", "t"]
    wrong_type[position] = None
    with pytest.raises(TypeError, match=rf"^{named} must be a str, not NoneType"):
        task_key(*wrong_type)


@pytest.mark.parametrize("small", [0.5, 1e-9, 5e-324])
def test_positive_takes_any_number_above_zero(small: float) -> None:
    assert check_number("interval", small, positive=True) == small


def test_number_bounds_are_inclusive() -> None:
    assert check_number("x", 1, minimum=1) == 1.0
    assert check_number("x", 2, maximum=2) == 2.0
    assert check_number("x", 2.0, minimum=2, maximum=2) == 2.0


def test_int_bounds_are_inclusive() -> None:
    assert check_int("n", 1, minimum=1, maximum=5) == 1
    assert check_int("n", 5, minimum=1, maximum=5) == 5
    assert check_int("n", 1, minimum=1) == 1
    assert check_int("n", 3, maximum=3) == 3
    with pytest.raises(ValueError, match="between 1 and 5, got 0"):
        check_int("n", 0, minimum=1, maximum=5)
