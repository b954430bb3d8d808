"""``start``, ``update`` and ``stop``: one action each, with the conventions of ``get``.

On success a short confirmation (terminal) or one JSON line (a pipe, or ``--json``)::

    {"action":"StartSegment","app_id":"a","room_id":"r","task_id":"t","ok":true}

On a service error the same line with ``"ok":false`` and the ``error`` object ``get`` prints,
exit status 1. Arguments the library rejects before sending are usage errors (exit 2). The
first Ctrl-C abandons the call (exit 130) and says that it may have reached the service.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

from .._client import SegmentClient
from .._errors import RtcSegmentError
from .._models import (
    Control,
    CustomConfig,
    StartOutcome,
    StorageConfig,
    StorageType,
    Stream,
    StreamType,
    TaskKey,
    TosConfig,
    VeImageXConfig,
    Vendor,
    VodConfig,
)
from ._context import Context, UsageError, make_client, run_until_interrupted
from ._records import action_record, dumps, error_dict
from ._views import action_confirmation

__all__ = ["command_start", "command_stop", "command_update", "storage_config_from"]

EXIT_INTERRUPTED = 130

_Call = Callable[[SegmentClient, TaskKey], Coroutine[Any, Any, object]]

# Which storage options each --storage-type needs; every other storage option is refused,
# so that a flag meant for another type is never silently ignored.
_STORAGE_OPTIONS = {
    "account_id": "--account-id",
    "bucket": "--bucket",
    "space": "--space",
    "service_id": "--service-id",
    "vendor": "--vendor",
    "custom_access_key": "--custom-access-key",
    "custom_secret_key_stdin": "--custom-secret-key-stdin",
}
_REQUIRED = {
    "tos": ("account_id", "bucket"),
    "vod": ("account_id", "space"),
    "veimagex": ("account_id", "service_id"),
    "custom": ("bucket", "custom_access_key", "custom_secret_key_stdin"),
}
_OPTIONAL = {"custom": ("vendor",)}


def _check_storage_options(args: argparse.Namespace) -> None:
    kind = args.storage_type
    required = _REQUIRED[kind]
    allowed = set(required) | set(_OPTIONAL.get(kind, ()))
    for name, flag in _STORAGE_OPTIONS.items():
        given = getattr(args, name) not in (None, False)
        if given and name not in allowed:
            raise UsageError(f"{flag} does not apply to --storage-type {kind}")
        if not given and name in required:
            needed = " ".join(_STORAGE_OPTIONS[n] for n in required)
            raise UsageError(f"--storage-type {kind} needs {needed}")


def storage_config_from(args: argparse.Namespace, read_secret: Callable[[], str]) -> StorageConfig:
    """The :class:`StorageConfig` the (already checked) storage options describe.

    ``read_secret`` supplies the third-party storage's secret key (``custom`` only).
    """
    region = args.storage_region
    kind = args.storage_type
    if kind == "tos":
        tos = TosConfig(account_id=args.account_id, bucket=args.bucket, region=region)
        return StorageConfig(type=StorageType.TOS, tos_config=tos)
    if kind == "vod":
        vod = VodConfig(account_id=args.account_id, space=args.space, region=region)
        return StorageConfig(type=StorageType.VOD, vod_config=vod)
    if kind == "veimagex":
        imagex = VeImageXConfig(
            account_id=args.account_id, service_id=args.service_id, region=region
        )
        return StorageConfig(type=StorageType.VEIMAGEX, veimagex_config=imagex)
    custom = CustomConfig(
        vendor=Vendor(args.vendor or 0),
        region=region,
        bucket=args.bucket,
        access_key=args.custom_access_key,
        secret_key=read_secret(),
    )
    return StorageConfig(type=StorageType.CUSTOM, custom_config=custom)


def _stdin_secret(context: Context) -> Callable[[], str]:
    def read() -> str:
        secret = context.terminal.stdin.readline().rstrip("\r\n")
        if not secret:
            raise UsageError("--custom-secret-key-stdin: no secret key on stdin")
        return secret

    return read


def _control(args: argparse.Namespace) -> Control | None:
    if not (args.align or args.mixed or args.ignore_silence or args.redundant_duration):
        return None  # the service's defaults
    return Control(
        align=args.align,
        mixed=args.mixed,
        ignore_silence=args.ignore_silence,
        redundant_duration=args.redundant_duration or 0,
    )


async def command_start(args: argparse.Namespace, context: Context) -> int:
    """StartSegment with the slicing and storage options."""
    streams = [
        Stream(index=index, user_id=user_id, stream_type=StreamType(kind))
        for index, user_id, kind in args.streams
    ]
    _check_storage_options(args)  # before anything reads stdin
    async with make_client(args, context) as client:
        # Read after make_client: with --secret-key-stdin the API secret is the first line.
        storage = storage_config_from(args, _stdin_secret(context))

        def call(client: SegmentClient, key: TaskKey) -> Coroutine[Any, Any, StartOutcome]:
            return client.start_segment(
                *key,
                storage_config=storage,
                target_streams=streams or None,
                duration=args.duration,
                max_idle_time=args.max_idle_time,
                handle=args.handle,
                identifier=args.identifier,
                control=_control(args),
                business_id=args.business_id,
            )

        return await _perform("StartSegment", "started", client, call, args, context)


async def command_update(args: argparse.Namespace, context: Context) -> int:
    """UpdateSegment: identifier, slicing on/off, slice length."""
    if args.identifier is None and args.handle is None and args.duration is None:
        raise UsageError("update needs at least one of --identifier, --[no-]handle, --duration")
    async with make_client(args, context) as client:

        def call(client: SegmentClient, key: TaskKey) -> Coroutine[Any, Any, None]:
            return client.update_segment(
                *key,
                identifier=args.identifier,
                handle=args.handle,
                duration=args.duration,
                business_id=args.business_id,
            )

        return await _perform("UpdateSegment", "updated", client, call, args, context)


async def command_stop(args: argparse.Namespace, context: Context) -> int:
    """StopSegment."""
    async with make_client(args, context) as client:

        def call(client: SegmentClient, key: TaskKey) -> Coroutine[Any, Any, None]:
            return client.stop_segment(*key, business_id=args.business_id)

        return await _perform("StopSegment", "stopped", client, call, args, context)


async def _perform(
    action: str,
    done: str,
    client: SegmentClient,
    call: _Call,
    args: argparse.Namespace,
    context: Context,
) -> int:
    terminal = context.terminal
    key = TaskKey(args.app_id, args.room_id, args.task_id)
    as_json = args.json or not terminal.stdout_is_terminal
    outcome: list[object] = []

    async def perform() -> None:
        outcome.append(await call(client, key))

    try:
        completed = await run_until_interrupted(perform(), context.interrupt)
    except RtcSegmentError as error:
        terminal.warn(f"rtc-segment: {error}")
        if error.ambiguous:
            terminal.warn(
                f"rtc-segment: the {action} request may nevertheless have reached the service; "
                "check with `rtc-segment get`"
            )
        if as_json:
            record = action_record(action, key, ok=False)
            record["error"] = error_dict(error)
            if error.ambiguous:
                record["error"]["ambiguous"] = True
            terminal.emit(dumps(record))
        return 1
    except (TypeError, ValueError) as error:  # the client's checks: nothing was sent
        raise UsageError(str(error)) from None
    if not completed:
        terminal.warn(
            f"rtc-segment: interrupted; the {action} request may have reached the service "
            "(check with `rtc-segment get`)"
        )
        return EXIT_INTERRUPTED
    # API version 2023-11-01 answers a start of a running task with a notice, not an error.
    already = outcome == [StartOutcome.ALREADY_RUNNING]
    if as_json:
        record = action_record(action, key, ok=True)
        if already:
            record["already_running"] = True
        terminal.emit(dumps(record))
    else:
        terminal.show(action_confirmation(action, "already running:" if already else done, key))
    return 0
