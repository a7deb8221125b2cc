"""Every call of the SQL catalog bounded in time, whatever the server or the network does.

psycopg2 (under SQLAlchemy, under pyiceberg's SqlCatalog) waits on its socket without a limit:
a catalog database that is frozen, or a network that drops packets after the connection was
made, leaves a commit waiting forever in its worker thread, the table's lane stuck behind it and
the sink reported healthy. libpq's timeouts do not cover that: `connect_timeout` bounds only
making the connection, TCP keepalives and `tcp_user_timeout` see a peer that still acknowledges
(a frozen process's kernel does), and `statement_timeout` is enforced by the server, which may
never see the statement.

So the store installs psycopg2's wait callback (psycopg2 then drives libpq non-blocking and
calls it whenever it would wait): this one waits with `select` and gives up when the socket has
been silent for `CATALOG_WAIT_SEC`, raising `OperationalError`. psycopg2 then discards the
connection, SQLAlchemy invalidates it, and the store's one retry rule retries the attempt from
the start: a commit whose outcome is unknown is resolved by reading the table's progress again
(the summary says whether it applied), never by committing it twice.

The callback is process-wide (psycopg2 has one); only the catalog uses psycopg2 in a recorder.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg2
from psycopg2 import extensions

# The longest silence of the catalog's socket within one call. A catalog call is a small query;
# a server that says nothing for this long is treated as down (the attempt is retried).
CATALOG_WAIT_SEC = 15.0

_limit = CATALOG_WAIT_SEC


def wait_bounded(conn: Any) -> None:
    """psycopg2's wait callback: poll until done, each wait at most `_limit` seconds."""
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        if state == extensions.POLL_READ:
            ready = select.select([conn.fileno()], [], [], _limit)[0]
        elif state == extensions.POLL_WRITE:
            ready = select.select([], [conn.fileno()], [], _limit)[1]
        else:
            raise psycopg2.OperationalError(f"bad state from poll: {state}")
        if not ready:
            raise psycopg2.OperationalError(
                f"the catalog database did not answer within {_limit:g}s (connection dropped)"
            )


def install(limit_sec: float = CATALOG_WAIT_SEC) -> None:
    """Bound every psycopg2 wait of this process by `limit_sec` of silence."""
    global _limit
    _limit = limit_sec
    extensions.set_wait_callback(wait_bounded)
