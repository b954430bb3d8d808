"""``Emulator.seed_rooms``: many rooms in varied, realistic states, reproducibly."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from .._models import (
    Control,
    CustomConfig,
    StopReason,
    StorageConfig,
    StorageType,
    Stream,
    StreamType,
    TargetStreams,
    TaskKey,
    TaskStatus,
    TosConfig,
    VeImageXConfig,
    Vendor,
    VodConfig,
)
from ._state import Lifecycle, TaskStore, register, to_ms

__all__ = ["seed_rooms"]

_ENDINGS = (StopReason.IDLE_TIMEOUT, StopReason.STOP_BY_API, StopReason.USER_DISCONNECT)


def _storage(rng: random.Random) -> StorageConfig:
    kind = rng.choices(
        (StorageType.TOS, StorageType.VOD, StorageType.CUSTOM, StorageType.VEIMAGEX),
        weights=(6, 2, 1, 1),
    )[0]
    if kind is StorageType.VOD:
        return StorageConfig(type=kind, vod_config=VodConfig("2100000000", "demo-space", 0))
    if kind is StorageType.CUSTOM:
        return StorageConfig(
            type=kind,
            custom_config=CustomConfig(Vendor.AMAZON_S3, rng.randrange(0, 6), "demo-s3-bucket"),
        )
    if kind is StorageType.VEIMAGEX:
        return StorageConfig(
            type=kind, veimagex_config=VeImageXConfig("2100000000", "demo-imagex", 0)
        )
    return StorageConfig(
        type=kind, tos_config=TosConfig("2100000000", "demo-bucket", rng.randrange(0, 3))
    )


def _streams(rng: random.Random) -> TargetStreams:
    count = rng.choice((0, 0, 1, 2, 3))  # empty list: every stream in the room
    return TargetStreams(
        tuple(
            Stream(
                index=i,
                user_id=f"user{rng.randrange(1000)}",
                stream_type=StreamType.SCREEN if rng.random() < 0.1 else StreamType.NORMAL,
            )
            for i in range(count)
        )
    )


def seed_rooms(store: TaskStore, n: int, *, app_id: str, seed: int | None) -> list[TaskKey]:
    """Register ``n`` rooms (``room-00000``...) with one task each; see ``Emulator.seed_rooms``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    rng = random.Random(seed)
    now = store.wall_time()
    keys = []
    width = max(5, len(str(n - 1)))
    for i in range(n):
        key = TaskKey(app_id, f"room-{i:0{width}d}", f"task-{i:0{width}d}")
        common: dict[str, Any] = {
            "max_idle_time": rng.choice((60, 180, 600)),
            "duration": rng.choice((10, 20, 30, 60)),
            "handle": rng.random() < 0.9,
            "identifier": f"demo{i}" if rng.random() < 0.5 else None,
            "target_streams": _streams(rng),
            "control": Control(
                align=rng.random() < 0.5,
                mixed=rng.random() < 0.3,
                ignore_silence=rng.random() < 0.5,
                redundant_duration=rng.choice((0, 0, 500, 1000)),
            ),
            "storage_config": _storage(rng),
        }
        kind = rng.random()
        if kind < 0.10:  # not started yet: starts within 5 s, ends within a minute
            running = rng.uniform(0.5, 5.0)
            register(
                store,
                key,
                lifecycle=Lifecycle.after_seconds(
                    running=running,
                    ended=running + rng.uniform(5.0, 55.0),
                    stop_reason=rng.choice(_ENDINGS),
                ),
                **common,
            )
        elif kind < 0.45:  # running, ends within seconds
            register(
                store,
                key,
                start_time=to_ms(now - timedelta(seconds=rng.uniform(30, 3600))),
                lifecycle=Lifecycle.after_seconds(
                    ended=rng.uniform(2.0, 20.0), stop_reason=rng.choice(_ENDINGS)
                ),
                **common,
            )
        elif kind < 0.70:  # running for a long while yet
            register(
                store,
                key,
                start_time=to_ms(now - timedelta(seconds=rng.uniform(60, 7200))),
                **common,
            )
        elif kind < 0.90:  # ended within the last two days
            started = now - timedelta(hours=rng.uniform(1, 48))
            register(
                store,
                key,
                status=TaskStatus.ENDED,
                start_time=started,
                end_time=started + timedelta(minutes=rng.uniform(1, 120)),
                stop_reason=rng.choice(_ENDINGS),
                **common,
            )
        else:  # failed to start
            started = now - timedelta(minutes=rng.uniform(1, 600))
            register(
                store,
                key,
                status=TaskStatus.FAILED,
                start_time=started,
                end_time=started + timedelta(seconds=rng.uniform(0.1, 3)),
                stop_reason=StopReason.START_TASK_FAILED,
                **common,
            )
        keys.append(key)
    return keys
