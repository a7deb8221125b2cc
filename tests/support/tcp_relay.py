"""A TCP relay that a test runs in front of a server, and can hang and resume.

`Relay(target).start()` listens on a free local port and forwards every connection to `target`
in a thread of its own (its own event loop: a test that blocks its loop, waiting for a
recorder to start, must not stop the relay). `hang()` stops forwarding bytes in both
directions without closing anything, as a frozen server or a black-holed network looks to a
client: connections stay open, the kernel still accepts what is sent, nothing answers.
`resume()` forwards again, the bytes held meanwhile first.

`hold_replies_after(marker)` makes the first connection whose client then sends `marker` (say
the `COMMIT` of a PostgreSQL simple query) keep getting its bytes to the server while the
server's replies are held: the request is carried out, its answer never arrives (an outcome
unknown to the client), until `resume()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass
class Relay:
    target: tuple[str, int]
    host: str = "127.0.0.1"
    port: int = 0  # the listening port, once started
    connections: int = 0  # accepted so far
    held: int = 0  # connections whose replies were held by `hold_replies_after`
    _trigger: bytes | None = None
    _replies: set[asyncio.Event] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _flowing: asyncio.Event | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> Relay:
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the relay did not start")
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def hang(self) -> None:
        self._call(lambda: self._event().clear())

    def resume(self) -> None:
        def go() -> None:
            self._event().set()
            for replies in self._replies:
                replies.set()

        self._call(go)

    def hold_replies_after(self, marker: bytes) -> None:
        def arm() -> None:
            self._trigger = marker

        self._call(arm)

    @property
    def hung(self) -> bool:
        return not self._event().is_set()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- in the relay's thread -----------------------------------------------------------
    def _event(self) -> asyncio.Event:
        assert self._flowing is not None, "the relay is not started"
        return self._flowing

    def _call(self, fn: object) -> None:
        assert self._loop is not None and callable(fn)
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        replies: asyncio.Event | None = None,  # set: the server's side, held while clear
        requests_of: asyncio.Event | None = None,  # set: the client's side, for this event
    ) -> None:
        flowing = self._event()
        try:
            while data := await reader.read(256 * 1024):
                await flowing.wait()  # a hang holds the bytes read; nothing is closed
                if replies is not None:
                    await replies.wait()
                if requests_of is not None and self._trigger and self._trigger in data:
                    self._trigger = None
                    self.held += 1
                    requests_of.clear()  # forwarded; what the server answers is held
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await flowing.wait()
                if writer.can_write_eof():
                    writer.write_eof()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            tr, tw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        replies = asyncio.Event()
        replies.set()
        self._replies.add(replies)
        try:
            await asyncio.gather(
                self._pipe(cr, tw, requests_of=replies), self._pipe(tr, cw, replies=replies)
            )
        except asyncio.CancelledError:
            pass  # the relay is closing
        finally:
            self._replies.discard(replies)
            for w in (tw, cw):
                with contextlib.suppress(Exception):
                    w.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, self.port, backlog=256)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
