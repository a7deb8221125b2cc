"""A TCP forwarder that stands in front of the S3 server as its public address.

Stopping the gate is an S3 outage (connections refused and cut) while the in-memory S3 server
behind it keeps its objects; starting the gate again on the same port ends the outage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection(*target)
        except OSError:
            cw.close()
            return
        try:
            await asyncio.gather(pipe(cr, tw), pipe(tr, cw))
        finally:
            for w in (tw, cw):
                with contextlib.suppress(Exception):
                    w.close()

    server = await asyncio.start_server(handle, *listen, reuse_address=True, backlog=512)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", required=True, help="host:port to accept on")
    ap.add_argument("--target", required=True, help="host:port to forward to")
    args = ap.parse_args()
    lh, lp = args.listen.rsplit(":", 1)
    th, tp = args.target.rsplit(":", 1)
    asyncio.run(serve((lh, int(lp)), (th, int(tp))))


if __name__ == "__main__":
    main()
