"""A client's request to the crcache agent, as it arrives.

The agent (:mod:`crcache.daemons.agent`) reads each request without
blocking, in two messages (the request, then the client's descriptors);
:class:`Pending` is one client's part-read request, and :func:`valid`
checks that a request has exactly the shape
:mod:`crcache.daemons.client` sends.
"""

from __future__ import annotations

import socket

from crcache.daemons import client as agentclient
from crcache.daemons import messages


class Pending:
    """A client whose request (then descriptors) has not fully arrived."""

    __slots__ = ('conn', 'incoming', 'deadline', 'request')

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn = conn
        self.incoming = messages.Incoming(max_fds=3)
        self.deadline = deadline
        self.request: tuple | None = None

    def close(self) -> None:
        self.incoming.close()
        self.conn.close()


def valid(request: object) -> bool:
    """Whether ``request`` has exactly the shape the client sends."""
    if not (isinstance(request, tuple) and len(request) == 11
            and request[0] == agentclient.PROTOCOL):
        return False
    (_, argv, env, cwd, umask, client_pid, client_ppid, argv0,
     warned, identity, ignored) = request
    if not (isinstance(identity, list) and isinstance(ignored, list)
            and all(isinstance(n, int) and not isinstance(n, bool)
                    for n in identity + ignored)):
        return False
    return (isinstance(argv, list) and all(isinstance(a, str) for a in argv)
            and isinstance(env, dict)
            and all(isinstance(k, str) and isinstance(v, str)
                    for k, v in env.items())
            and isinstance(cwd, str) and isinstance(argv0, str)
            and all(isinstance(n, int) and not isinstance(n, bool)
                    for n in (umask, client_pid, client_ppid))
            and isinstance(warned, list)
            and all(isinstance(w, str) for w in warned))
