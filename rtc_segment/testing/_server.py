"""The loopback delivery: a request handler (the emulator) as a plain ASGI app, served by uvicorn.

uvicorn is imported only here, and only when a server is started: it is an optional
dependency, the ``emulator`` extra (``pip install 'rtc-segment[emulator]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ._envelope import EmulatorRequest, RequestHandler

__all__ = ["EmulatorASGIApp", "run_emulator", "serve"]

_DROP_PREFIX = b'{"ResponseMetadata":{"RequestId":"'
_INCOMPLETE = "ASGI callable returned without completing response."


class EmulatorASGIApp:
    """An ASGI 3 application that answers every HTTP request through a request handler.

    Args:
        handler: What answers the requests: an ``Emulator``, or any
            :class:`~rtc_segment.testing.RequestHandler`.
    """

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler
        """The request handler this application delivers to."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI entry point."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        answer = await self.handler.handle(
            EmulatorRequest(
                method=scope["method"],
                path=scope["path"],
                query=scope["query_string"].decode("ascii", "replace"),
                headers={
                    name.decode("latin-1").lower(): value.decode("latin-1")
                    for name, value in reversed(scope["headers"])
                },
                body=b"".join(chunks),
            )
        )
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        headers = [(name.encode(), value.encode()) for name, value in answer.headers]
        if answer.drop:
            # Promise more than we send, then end: the server closes the connection and the
            # client sees a body cut short (httpx.RemoteProtocolError).
            headers.append((b"content-length", str(len(_DROP_PREFIX) + 200).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": _DROP_PREFIX, "more_body": True})
            return
        headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})


class _HideDeliberateDrops(logging.Filter):
    """Drops uvicorn's complaint about the connections the emulator closes on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _INCOMPLETE


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every keep-alive answer (headers and body are written
    # separately) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _base_url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@functools.cache
def _server_class(*, own_signals: bool) -> Any:
    """``uvicorn.Server``, or a subclass that leaves the process's signal handlers alone.

    ``Server.serve()`` installs its own SIGINT/SIGTERM handlers and, when it stops after a
    signal, raises that signal again. That is right for a process that is the server, and
    wrong for one embedded in the caller's event loop: the caller's Ctrl-C handling would
    stop working while the emulator serves, and a Ctrl-C would then be delivered twice.
    """
    import uvicorn

    if own_signals:
        return uvicorn.Server

    class EmbeddedServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return EmbeddedServer


@contextlib.asynccontextmanager
async def _running(
    handler: RequestHandler, host: str, port: int, *, own_signals: bool = False
) -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "serving the emulator needs uvicorn: pip install 'rtc-segment[emulator]'"
        ) from exc
    sock = _bind(host, port)
    config = uvicorn.Config(
        EmulatorASGIApp(handler),
        lifespan="off",
        access_log=False,
        log_config=None,  # a library must not reconfigure the application's logging
        log_level="warning",
        timeout_keep_alive=30,
    )
    server = _server_class(own_signals=own_signals)(config)
    hide = _HideDeliberateDrops()
    error_logger = logging.getLogger("uvicorn.error")
    error_logger.addFilter(hide)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # startup failed: raise its error
                raise RuntimeError("the emulator's server stopped during startup")
            await asyncio.sleep(0.005)
        yield _base_url(sock, host), task
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        error_logger.removeFilter(hide)
        sock.close()


@contextlib.asynccontextmanager
async def serve(
    handler: RequestHandler, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``handler`` on ``host:port`` while the context is open; yields the base URL.

    The server runs inside the caller's event loop and leaves signal handling to the caller
    (a Ctrl-C reaches the application, not uvicorn).
    """
    async with _running(handler, host, port) as (url, _task):
        yield url


def run_emulator(
    emulator: RequestHandler,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``emulator`` until interrupted (Ctrl-C or SIGTERM); blocks. Prints nothing.

    Args:
        emulator: The emulator to serve (or any
            :class:`~rtc_segment.testing.RequestHandler`).
        host: The address to listen on (keep it loopback: the emulator is not hardened).
        port: The port; 0 picks a free one.
        on_ready: Called with the base URL (``http://127.0.0.1:8080``) once it listens --
            e.g. for the CLI to print it together with the credentials.
    """

    async def main() -> None:
        # This process *is* the server: uvicorn's own Ctrl-C/SIGTERM handling stops it.
        async with _running(emulator, host, port, own_signals=True) as (url, task):
            if on_ready is not None:
                on_ready(url)
            await asyncio.shield(task)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
