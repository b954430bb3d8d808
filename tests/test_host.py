"""The host's shared-state file: privacy, validation and rebuilds, the lock, the log."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import struct
from pathlib import Path

import pytest

from rtc_segment import _host
from rtc_segment._host import (
    DIRECTORY_ENV,
    HostState,
    HostStateUnavailableError,
    state_directory,
)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_state(path: Path, clock: Clock, qps: float = 60.0) -> HostState:
    return HostState(path, qps, clock=clock, rebuild_window=1.5)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return state_directory(tmp_path)


def test_state_directory_is_private_and_under_the_chosen_base(tmp_path: Path) -> None:
    made = state_directory(tmp_path)
    assert made == tmp_path / f"rtc_segment-{os.getuid()}"
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert state_directory(tmp_path) == made  # an existing private one is reused


def test_state_directory_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert state_directory().parent == tmp_path / "env"
    monkeypatch.delenv(DIRECTORY_ENV)
    (tmp_path / "xdg").mkdir()
    assert state_directory().parent == tmp_path / "xdg"


def test_a_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    target = tmp_path / f"rtc_segment-{os.getuid()}"
    target.mkdir(mode=0o700)
    target.chmod(0o770)
    with pytest.raises(HostStateUnavailableError, match="open to other users"):
        state_directory(tmp_path)


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / f"rtc_segment-{os.getuid()}").symlink_to(real)
    with pytest.raises(HostStateUnavailableError, match="symlink"):
        state_directory(tmp_path)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory away")
def test_another_users_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / f"rtc_segment-{os.getuid()}"
    target.mkdir(mode=0o700)
    os.chown(target, 4242, 4242)
    with pytest.raises(HostStateUnavailableError, match="another user"):
        state_directory(tmp_path)


def test_an_unusable_base_is_reported(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(HostStateUnavailableError, match="cannot create"):
        state_directory(not_a_directory)


def test_the_file_is_0600_and_holds_no_secret(directory: Path) -> None:
    path = directory / "0123456789abcdef-GetSegmentTask-60.0.v1"
    state = make_state(path, Clock())
    with state.transaction() as log:
        log.record(1000.0, sent=1000.0, window=1.01, owner=7)
    state.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    assert content.startswith(b"RTCSEGHL")
    assert b"AKLT" not in content and b"secret" not in content


def test_a_symlinked_file_is_refused(directory: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    path = directory / "key-60.0.v1"
    path.symlink_to(elsewhere)
    with pytest.raises(HostStateUnavailableError, match="cannot open"):
        make_state(path, Clock())


def test_a_file_open_to_others_is_refused(directory: Path) -> None:
    path = directory / "key-60.0.v1"
    path.write_bytes(b"")
    path.chmod(0o644)
    with pytest.raises(HostStateUnavailableError, match="open to other users"):
        make_state(path, Clock())


def test_two_mappings_of_one_file_share_the_log(directory: Path) -> None:
    clock = Clock()
    first = make_state(directory / "key-3.0.v1", clock, qps=3)
    second = make_state(directory / "key-3.0.v1", clock, qps=3)
    with first.transaction() as log:
        for at in (1000.0, 1000.1, 1000.2):
            log.record(at, sent=at, window=1.0, owner=1)
    with second.transaction() as log:
        assert len(log) == 3
        # A fourth send waits for the oldest to be one window old.
        assert log.wait(1000.5) == pytest.approx(0.5)
        assert log.wait(1001.0) == 0.0


def test_the_log_keeps_the_last_limit_sends_in_order(directory: Path) -> None:
    state = make_state(directory / "key-2.0.v1", Clock(), qps=2)
    with state.transaction() as log:
        log.record(10.0, sent=10.0, window=1.0, owner=1)
        log.record(9.0, sent=9.5, window=1.0, owner=1)  # moved up to 10.0: kept in order
        assert log.wait(10.5) == pytest.approx(0.5)
        log.record(11.0, sent=11.0, window=1.0, owner=1)
        assert log.wait(10.5) == pytest.approx(0.5)  # the oldest is now the moved-up one
        assert log.newest_at() == 11.0


def test_an_answer_sets_the_window_of_its_own_send_only(directory: Path) -> None:
    state = make_state(directory / "key-2.0.v1", Clock(), qps=2)
    with state.transaction() as log:
        log.record(10.0, sent=10.0, window=1.5, owner=1)
        log.record(10.0, sent=10.0, window=1.5, owner=2)
        assert log.answered(owner=2, sent=10.0, now=10.02, window=lambda rt: 1 + rt / 2)
        assert not log.answered(
            owner=2, sent=10.0, now=10.02, window=lambda rt: 9.0
        )  # already answered
        assert not log.answered(
            owner=3, sent=10.0, now=10.02, window=lambda rt: 9.0
        )  # not its send
        assert log.wait(10.0) == pytest.approx(1.5)  # the oldest (owner 1's) keeps 1.5
        log.record(10.2, sent=10.2, window=1.0, owner=1)
        assert log.wait(10.0) == pytest.approx(1.01)  # owner 2's send is the oldest now


def test_the_rate_cap_is_shared(directory: Path) -> None:
    clock = Clock()
    first = make_state(directory / "key-60.0.v1", clock)
    second = make_state(directory / "key-60.0.v1", clock)
    with first.transaction() as log:
        assert log.rate_cap is None
        log.rate_cap = 30.0
    with second.transaction() as log:
        assert log.rate_cap == 30.0


def test_the_lock_is_held_only_inside_a_transaction(directory: Path) -> None:
    path = directory / "key-60.0.v1"
    state = make_state(path, Clock())
    other = os.open(path, os.O_RDWR)
    try:
        with state.transaction(), pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
        fcntl.flock(other, fcntl.LOCK_UN)
    finally:
        os.close(other)


def _full_log_wait(state: HostState, now: float) -> float:
    with state.transaction() as log:
        return log.wait(now)


def test_a_corrupt_file_is_rebuilt_as_if_busy(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    path = directory / "key-60.0.v1"
    state = make_state(path, clock)
    with state.transaction() as log:
        log.record(999.0, sent=999.0, window=1.0, owner=1)
    with open(path, "r+b") as raw:  # flip one byte of the entries
        raw.seek(200)
        byte = raw.read(1)
        raw.seek(200)
        raw.write(bytes([byte[0] ^ 0xFF]))
    with caplog.at_level(logging.WARNING, logger="rtc_segment"):
        # Never trusted into a burst: 60 sends assumed just now, the next waits a window.
        assert _full_log_wait(state, clock.now) == pytest.approx(1.5)
    assert "corrupt (checksum)" in caplog.text


def test_a_time_far_ahead_of_the_clock_is_not_trusted(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    state = make_state(directory / "key-60.0.v1", clock)
    with state.transaction() as log:
        log.next_slot = clock.now + 10 * 3600  # no reservation is ten hours ahead
    with caplog.at_level(logging.WARNING, logger="rtc_segment"), state.transaction() as log:
        assert log.next_slot == clock.now
        assert len(log) == 60
    assert "ahead of the clock" in caplog.text


def test_a_file_of_another_boot_is_rebuilt_empty(
    directory: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    state = make_state(directory / "key-60.0.v1", clock)
    with state.transaction() as log:
        for _ in range(60):
            log.record(clock.now, sent=clock.now, window=1.0, owner=1)
    monkeypatch.setattr(_host, "_BOOT_ID", b"\x01" * 16)
    with caplog.at_level(logging.WARNING, logger="rtc_segment"), state.transaction() as log:
        assert len(log) == 0  # its times were on a clock that no longer runs
    assert caplog.text == ""


def test_a_truncated_file_is_rebuilt_as_if_busy(directory: Path) -> None:
    clock = Clock()
    path = directory / "key-60.0.v1"
    make_state(path, clock).close()
    with open(path, "r+b") as raw:
        raw.truncate(100)
    assert _full_log_wait(make_state(path, clock), clock.now) == pytest.approx(1.5)


def test_a_file_of_another_layout_version_is_rebuilt(directory: Path) -> None:
    clock = Clock()
    path = directory / "key-60.0.v1"
    make_state(path, clock).close()
    with open(path, "r+b") as raw:
        raw.seek(8)
        raw.write(struct.pack("<I", 99))
    # The checksum catches it first; either way it is not used as it is.
    assert _full_log_wait(make_state(path, clock), clock.now) == pytest.approx(1.5)


def test_a_replaced_file_is_reopened(directory: Path) -> None:
    clock = Clock()
    path = directory / "key-60.0.v1"
    state = make_state(path, clock)
    path.unlink()  # e.g. the runtime directory was cleaned up
    other = make_state(path, clock)
    with other.transaction() as log:
        log.rate_cap = 12.0
    with state.transaction() as log:
        assert log.rate_cap == 12.0


def test_memory_state_works_without_a_file() -> None:
    state = HostState(None, 2, clock=Clock(), rebuild_window=1.5)
    with state.transaction() as log:
        log.record(5.0, sent=5.0, window=1.0, owner=1)
        log.record(5.0, sent=5.0, window=1.0, owner=1)
        assert log.wait(5.0) == pytest.approx(1.0)


def test_a_file_that_cannot_be_made_again_keeps_the_old_copy(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    path = directory / "key-60.0.v1"
    state = make_state(path, clock)
    with state.transaction() as log:
        log.rate_cap = 7.0
    path.unlink()
    directory.chmod(0o770)  # no longer private: refused
    try:
        with caplog.at_level(logging.WARNING, logger="rtc_segment"):
            for _ in range(2):
                with state.transaction() as log:
                    assert log.rate_cap == 7.0  # the old mapping still paces
    finally:
        directory.chmod(0o700)
    assert caplog.text.count("cannot be made again") == 1


def test_an_answer_that_could_be_either_of_two_close_sends_changes_neither(
    directory: Path,
) -> None:
    state = make_state(directory / "key-3.0.v1", Clock(), qps=3)
    with state.transaction() as log:
        log.record(10.0, sent=10.0, window=1.5, owner=1)
        log.record(10.0005, sent=10.0005, window=1.5, owner=1)  # within the tolerance
        # A coarse clock: the caller's reading may be before or after either send.
        assert not log.answered(
            owner=1, sent=10.0002, now=10.03, window=lambda rt: 1.01, tolerance=0.002
        )
        log.record(10.2, sent=10.2, window=1.5, owner=1)
        assert log.wait(10.0) == pytest.approx(1.5)  # both kept their wide windows
        # A reading a millisecond before the send (uvloop) still finds it.
        assert log.answered(
            owner=1, sent=10.199, now=10.23, window=lambda rt: 1 + rt, tolerance=0.002
        )
        log.record(10.4, sent=10.4, window=1.5, owner=1)
        log.record(10.5, sent=10.5, window=1.5, owner=1)
        assert log.wait(10.2) == pytest.approx(1.03)  # 10.2 s send, answered in 30 ms


def test_a_late_reading_finds_the_latest_send_before_it(directory: Path) -> None:
    state = make_state(directory / "key-3.0.v1", Clock(), qps=3)
    with state.transaction() as log:
        log.record(10.0, sent=10.0, window=1.5, owner=1)
        log.record(10.0051, sent=10.0051, window=1.5, owner=1)
        log.record(10.2, sent=10.2, window=1.5, owner=1)
        # The caller read its clock 5 ms after its send was logged (descheduled); the
        # process's next send went just after that reading, and is not the one answered.
        assert log.answered(owner=1, sent=10.005, now=10.03, window=lambda rt: 1 + rt)
        assert log.wait(10.0) == pytest.approx(1.03)
