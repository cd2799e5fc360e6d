"""A real Docker engine for the docker source's tests, and a test image.

``$CRCACHE_TEST_DOCKER_HOST`` names an engine to use (``.ci/run`` starts
one and sets it). Otherwise, when running as root with ``dockerd``
installed, the first test that needs an engine starts a private one for
the whole test process: its own ``--data-root``, ``--exec-root``,
``--pidfile`` and unix socket in a temporary directory, no bridge and no
iptables rules (tests need no network), stopped by pid at exit.

No registry is reachable, so the test image is made locally: ``docker
import`` of a root filesystem holding Debian's static busybox and its
applets (a couple of MB, well under a second).
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import tarfile
import tempfile
import time

import testtools

from crcache.tests.functional import base

DOCKERD = '/usr/sbin/dockerd'
BUSYBOX = '/bin/busybox'
IMAGE = 'crcache-test/busybox:latest'
HOST_ENV = 'CRCACHE_TEST_DOCKER_HOST'

_engine: dict[str, object] = {}


def _client(host: str):
    import docker
    return docker.APIClient(base_url=host, version='1.41', timeout=60)


def _start_private() -> str:
    directory = tempfile.mkdtemp(prefix='crcache-dockerd.')
    sock = os.path.join(directory, 'docker.sock')
    log = open(os.path.join(directory, 'dockerd.log'), 'wb')
    proc = subprocess.Popen(
        [DOCKERD, '--data-root', os.path.join(directory, 'data'),
         '--exec-root', os.path.join(directory, 'exec'),
         '--pidfile', os.path.join(directory, 'docker.pid'),
         '-H', f'unix://{sock}', '--bridge=none', '--iptables=false',
         '--ip-masq=false', '--default-ulimit', 'nofile=20000:20000'],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        start_new_session=True)
    log.close()

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)
    host = f'unix://{sock}'
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            _client(host).ping()
            return host
        except Exception:
            time.sleep(0.1)
    with open(os.path.join(directory, 'dockerd.log'), errors='replace') as f:
        raise RuntimeError('dockerd did not start: ' + f.read()[-2000:])


def _busybox_rootfs() -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode='w') as tar:
        for name in ('bin', 'tmp', 'root', 'etc'):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == 'tmp' else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname='bin/busybox')
        applets = subprocess.run([BUSYBOX, '--list'], capture_output=True,
                                 text=True, check=True).stdout.split()
        for applet in applets:
            if applet == 'busybox':
                continue
            info = tarfile.TarInfo(f'bin/{applet}')
            info.type = tarfile.SYMTYPE
            info.linkname = 'busybox'
            tar.addfile(info)
        passwd = b'root:x:0:0:root:/root:/bin/sh\n'
        info = tarfile.TarInfo('etc/passwd')
        info.size = len(passwd)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return data.getvalue()


def ensure_engine() -> tuple[str | None, str | None]:
    """(docker host, None) for a working engine with the test image, or
    (None, why not). An engine started here lives as long as the
    process."""
    if 'host' not in _engine:
        host = os.environ.get(HOST_ENV)
        reason = None
        if not host:
            if os.geteuid() != 0 or not os.path.exists(DOCKERD):
                reason = (f'no Docker engine: set {HOST_ENV}, or run as '
                          f'root with {DOCKERD} (Debian package docker.io)')
            elif not os.path.exists(BUSYBOX):
                reason = (f'{BUSYBOX} is missing (Debian package '
                          'busybox-static) to build the test image')
            else:
                try:
                    host = _start_private()
                except Exception as err:
                    reason = f'cannot start dockerd: {err}'
        if host and reason is None:
            try:
                client = _client(host)
                try:
                    client.inspect_image(IMAGE)
                except Exception:
                    repository, tag = IMAGE.rsplit(':', 1)
                    client.import_image_from_data(
                        _busybox_rootfs(), repository=repository, tag=tag,
                        changes=['ENV PATH=/bin'])
            except Exception as err:
                reason = f'the Docker engine at {host} does not work: {err}'
        _engine['host'] = None if reason else host
        _engine['reason'] = reason
    return _engine['host'], _engine['reason']


def engine(test: testtools.TestCase) -> tuple[str, str]:
    """(docker host, test image); skips (or, under CI=true, fails)."""
    host, reason = ensure_engine()
    if reason:
        if os.environ.get('CI') == 'true':
            test.fail(f'{reason}: CI must provide one')
        test.skipTest(reason)
    return host, IMAGE


def store_id(test: base.CLITestCase) -> str | None:
    """The id a test's state store labels its containers with."""
    path = os.path.join(test.cache_dir, 'state.db')
    if not os.path.exists(path):
        return None
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    return row[0] if row else None


def containers(host: str, store: str | None) -> list[dict]:
    """The engine's containers labelled with ``store`` (all states)."""
    if not store:
        return []
    return _client(host).containers(
        all=True, filters={'label': f'crcache.store={store}'})


def remove_containers(host: str, store: str | None) -> None:
    """Remove a test's containers, whatever state crcache left them in."""
    client = _client(host)
    for container in containers(host, store):
        try:
            client.remove_container(container['Id'], force=True)
        except Exception:
            pass


def captures(host: str, store: str | None) -> list[dict]:
    """The engine's images crcache captured for ``store``."""
    if not store:
        return []
    return _client(host).images(
        all=True, filters={'label': f'crcache.capture.store={store}'})


def remove_captures(host: str, store: str | None) -> None:
    """Remove a test's captured images (after its containers)."""
    client = _client(host)
    for image in captures(host, store):
        try:
            client.remove_image(image['Id'], force=True)
        except Exception:
            pass
