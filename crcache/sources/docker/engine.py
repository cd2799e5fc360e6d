"""Talking to the Docker engine on the hot path, without the SDK.

Starting an exec with its streams attached "hijacks" the HTTP connection:
the engine answers ``101 UPGRADED`` and from then on the connection
carries stdin one way and, without a tty, a multiplexed stdout/stderr the
other (8-byte frame headers: stream number, three zero bytes, big-endian
length). The SDK hands back its HTTP library's socket, whose buffer may
already hold the first output bytes and which cannot be half-closed to
send the end of stdin; so crcache opens this one connection itself,
keeps whatever arrived with the response headers, and moves bytes
between the connection and the caller's descriptors.

The few calls every ``crcache run`` and every reuse of a cached container
makes (create an exec, read its exit code, check the container runs) go
through :func:`request`, a plain ``http.client`` call over the same kind
of connection: the SDK's requests session costs several milliseconds a
call, which is most of what separates ``crcache run`` from ``docker
exec``. Everything else uses the SDK.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlparse

from crcache import exceptions
from crcache.transport import fdio

CHUNK = fdio.CHUNK


def connect(docker_host: str, timeout: float) -> socket.socket:
    """A raw connection to the engine at ``docker_host``."""
    url = urlparse(docker_host)
    if url.scheme in ('unix', ''):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(url.path or docker_host)
        return sock
    if url.scheme in ('tcp', 'http'):
        sock = socket.create_connection((url.hostname, url.port or 2375),
                                        timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise ValueError(f'cannot stream over {url.scheme}:// connections')


class _Connection(http.client.HTTPConnection):
    """An HTTP connection over whatever :func:`connect` opens."""

    def __init__(self, docker_host: str, timeout: float) -> None:
        super().__init__('docker', timeout=timeout)
        self.docker_host = docker_host

    def connect(self) -> None:
        self.sock = connect(self.docker_host, self.timeout)


def request(docker_host: str, method: str, path: str,
            body: dict | None = None,
            timeout: float = 60) -> tuple[int, Any]:
    """One API call; returns (HTTP status, decoded JSON or text)."""
    conn = _Connection(docker_host, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload,
                     headers={'Content-Type': 'application/json'}
                     if payload is not None else {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data.decode(errors='replace')


def start(docker_host: str, api_version: str, exec_id: str, tty: bool,
          timeout: float) -> tuple[socket.socket, bytes]:
    """Start an exec; return the hijacked connection and bytes read early."""
    sock = connect(docker_host, timeout)
    body = json.dumps({'Detach': False, 'Tty': tty}).encode()
    sock.sendall(
        f'POST /v{api_version}/exec/{exec_id}/start HTTP/1.1\r\n'
        'Host: docker\r\nContent-Type: application/json\r\n'
        'Connection: Upgrade\r\nUpgrade: tcp\r\n'
        f'Content-Length: {len(body)}\r\n\r\n'.encode() + body)
    data = b''
    while b'\r\n\r\n' not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise exceptions.CrcacheError(
                'the Docker engine closed the connection starting an exec')
        data += chunk
    head, _, early = data.partition(b'\r\n\r\n')
    status = head.split(b'\r\n', 1)[0].decode(errors='replace')
    code = status.split(' ')[1] if ' ' in status else ''
    if code not in ('101', '200'):
        raise exceptions.CrcacheError(
            f'the Docker engine refused to start the exec: {status}: '
            f'{early.decode(errors="replace").strip()[:300]}')
    sock.settimeout(None)
    return sock, early


class _Frames:
    """Reads multiplexed frames (or raw bytes, with a tty) off a socket.

    stderr goes through ``report``, if given, which takes the line of
    :mod:`crcache.transport.remotegroup`'s wrapper out.
    """

    def __init__(self, sock: socket.socket, early: bytes,
                 report: Any = None) -> None:
        self.sock = sock
        self.buffer = bytearray(early)
        self.report = report

    def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            chunk = self.sock.recv(max(CHUNK, size - len(self.buffer)))
            if not chunk:
                return False
            self.buffer.extend(chunk)
        return True

    def copy(self, stdout: int, stderr: int, tty: bool) -> None:
        if tty:
            if self.buffer:
                fdio.write_all(stdout, self.buffer)
            while chunk := self.sock.recv(CHUNK):
                fdio.write_all(stdout, chunk)
            return
        try:
            self._demultiplex(stdout, stderr)
        finally:
            if self.report is not None:
                fdio.write_all(stderr, self.report.flush())

    def _demultiplex(self, stdout: int, stderr: int) -> None:
        targets = {1: stdout, 2: stderr}
        report = self.report
        while self._fill(8):
            stream = self.buffer[0]
            size = int.from_bytes(self.buffer[4:8], 'big')
            del self.buffer[:8]
            # Large frames are passed on as they arrive, not held whole.
            while size:
                if not self.buffer and not self._fill(1):
                    return
                piece = min(size, len(self.buffer))
                target = targets.get(stream)
                if stream == 2 and report is not None and not report.done:
                    fdio.write_all(target,
                                   report.feed(bytes(self.buffer[:piece])))
                elif target is not None:
                    fdio.write_all(target, memoryview(self.buffer)[:piece])
                del self.buffer[:piece]
                size -= piece


def pump(sock: socket.socket, early: bytes, stdin: int, stdout: int,
         stderr: int, tty: bool, report: Any = None) -> None:
    """Move bytes until the exec's output ends; stdin EOF is passed on.

    ``report``: see :class:`_Frames`.
    """
    feeder = fdio.Feeder(stdin, sock.sendall,
                         lambda: sock.shutdown(socket.SHUT_WR))
    try:
        _Frames(sock, early, report).copy(stdout, stderr, tty)
    except BrokenPipeError:
        pass  # nobody reads our output any more
    finally:
        feeder.stop()
        sock.close()
