"""The ``docker`` source type: one container per instance.

Each instance is a container made from ``image`` and kept running by a
sleep loop; commands run in it through the exec API, files go in and out
through the archive API. Containers are named after their instance (plus
a short unique suffix) and labelled ``crcache.instance``,
``crcache.source`` and ``crcache.store`` (this state store's id), so
``crcache gc`` finds the ones a crash left behind, and only its own.

Speaks the Docker Engine API (1.41, Docker 20.10 and later) with the
Docker SDK for Python; Podman's Docker-compatible socket speaks it too,
though only Docker is tested. The SDK is imported only when
a docker source is used; exec streams go over a connection of our own
(:mod:`crcache.sources.docker.engine`).
"""

from __future__ import annotations

import base64
import json
import math
import os
import posixpath
import re
import threading
import uuid
from typing import Any

from oslo_config import cfg

from crcache.transport import cmdline
from crcache import exceptions
from crcache.transport import process
from crcache.sources import base

#: The Engine API version spoken: Docker 20.10 and later.
API_VERSION = '1.41'
DEFAULT_SOCKET = 'unix:///var/run/docker.sock'
KEEP_ALIVE = ('trap "exit 0" TERM INT; '
              'while :; do sleep 3600 & wait $!; done')
LABEL_INSTANCE = 'crcache.instance'
LABEL_SOURCE = 'crcache.source'
LABEL_STORE = 'crcache.store'
_MEMORY = re.compile(r'^\s*(\d+)\s*([kmgKMG]?)[bB]?\s*$')


def _memory_bytes(text: str) -> int:
    match = _MEMORY.match(text)
    if not match:
        raise ValueError(f'{text!r} is not a size (like 512m or 2g)')
    scale = {'': 1, 'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30}
    return int(match.group(1)) * scale[match.group(2).lower()]


class DockerSource(base.BackendSource):
    """Containers from an image, on a Docker engine."""

    warm_modules = ('crcache.sources.docker.engine', 'docker',
                    'docker.errors', 'requests.exceptions')
    opts = [
        cfg.StrOpt(
            'image',
            help='For docker: the image to make containers from. Required '
                 'for type=docker.'),
        cfg.StrOpt(
            'docker_host',
            help='For docker: the engine to use, as unix:///path or '
                 'tcp://host:port (default: $DOCKER_HOST, else '
                 'unix:///var/run/docker.sock).'),
        cfg.StrOpt(
            'pull',
            default='missing',
            choices=('never', 'missing'),
            help='For docker: pull the image when it is missing, or never '
                 '(a missing image is then an error).'),
        cfg.StrOpt(
            'workdir',
            help='For docker: the directory commands run in (default: the '
                 'image\'s).'),
        cfg.ListOpt(
            'env',
            default=[],
            help='For docker: environment variables of the containers, as '
                 'comma-separated KEY=VALUE.'),
        cfg.ListOpt(
            'volumes',
            default=[],
            help='For docker: bind mounts, as comma-separated '
                 'host_path:container_path[:ro].'),
        cfg.StrOpt(
            'network',
            help='For docker: the network to attach containers to '
                 '(default: the engine\'s).'),
        cfg.StrOpt(
            'user',
            help='For docker: the user commands run as (default: the '
                 'image\'s).'),
        cfg.BoolOpt(
            'privileged',
            default=False,
            help='For docker: run privileged containers.'),
        cfg.FloatOpt(
            'cpus',
            min=0,
            help='For docker: a CPU limit per container (for example 2 or '
                 '0.5); also the concurrency reported unless set.'),
        cfg.StrOpt(
            'memory',
            help='For docker: a memory limit per container (for example '
                 '512m or 2g).'),
        cfg.StrOpt(
            'keep_alive_command',
            default=KEEP_ALIVE,
            help='For docker: the command (run by /bin/sh) that keeps a '
                 'container running between commands.'),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._lock = threading.Lock()

    def validate(self) -> list[tuple[str, str]]:
        problems = super().validate()
        if not (self.conf.image or '').strip():
            problems.append(('image', 'required for type=docker'))
        for item in self.conf.env:
            if '=' not in item:
                problems.append(('env', f'{item!r} is not KEY=VALUE'))
        for item in self.conf.volumes:
            parts = item.split(':')
            if len(parts) not in (2, 3) or (len(parts) == 3
                                            and parts[2] not in ('ro', 'rw')):
                problems.append(
                    ('volumes', f'{item!r} is not host:container[:ro]'))
        if self.conf.memory:
            try:
                _memory_bytes(self.conf.memory)
            except ValueError as err:
                problems.append(('memory', str(err)))
        return problems

    # -- the engine ----------------------------------------------------------

    @property
    def docker_host(self) -> str:
        return (self.conf.docker_host or os.environ.get('DOCKER_HOST')
                or DEFAULT_SOCKET)

    def _error(self, message: str) -> exceptions.SourceError:
        return exceptions.SourceError(self.name, message)

    @property
    def api(self) -> Any:
        """The SDK's low-level client, made on first use."""
        with self._lock:
            if self._client is None:
                try:
                    import docker
                except ImportError:
                    raise self._error(
                        'the Docker SDK for Python is not installed (pip '
                        'install docker)')
                self._client = docker.APIClient(
                    base_url=self.docker_host, version=API_VERSION,
                    timeout=120)
            return self._client

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the engine; its failures become one-line errors."""
        import docker.errors
        import requests.exceptions
        try:
            return func(*args, **kwargs)
        except docker.errors.NotFound:
            raise
        except docker.errors.APIError as err:
            explanation = getattr(err, 'explanation', None) or str(err)
            raise self._error(f'{what}: {explanation}')
        except (requests.exceptions.ConnectionError, OSError) as err:
            raise self._error(
                f'cannot reach the Docker engine at {self.docker_host}: '
                f'{_reason(err)}')

    def _request(self, what: str, method: str, path: str,
                 body: dict | None = None) -> Any:
        """A hot-path API call (see :mod:`.engine`); None if 404."""
        from crcache.sources.docker import engine as dockerstream
        try:
            status, data = dockerstream.request(
                self.docker_host, method, f'/v{API_VERSION}{path}', body)
        except (OSError, ValueError, http_client_error()) as err:
            raise self._error(
                f'cannot reach the Docker engine at {self.docker_host}: '
                f'{_reason(err)}')
        if status == 404:
            return None
        if status >= 400:
            message = data.get('message') if isinstance(data, dict) else data
            raise self._error(f'{what}: {message}')
        return data

    # -- the contract --------------------------------------------------------

    def provision(self, names: list[str]) -> dict[str, base.Ref]:
        self._ensure_image()
        refs = {}
        for name in names:
            refs[name] = self._create(name)
        return refs

    def _ensure_image(self) -> None:
        import docker.errors
        image = self.conf.image
        try:
            self._call(f'looking up image {image}', self.api.inspect_image,
                       image)
            return
        except docker.errors.NotFound:
            pass
        if self.conf.pull == 'never':
            raise self._error(
                f'image {image} is not on the engine at {self.docker_host} '
                'and pull=never')
        repository, _, tag = image.rpartition(':')
        if not repository or '/' in tag:
            repository, tag = image, 'latest'
        try:
            self._call(f'pulling image {image}', self.api.pull, repository,
                       tag=tag)
        except docker.errors.NotFound:
            raise self._error(f'image {image} was not found to pull')

    def _create(self, name: str) -> base.Ref:
        conf = self.conf
        binds = {}
        for item in conf.volumes:
            parts = item.split(':')
            binds[os.path.abspath(os.path.expanduser(parts[0]))] = {
                'bind': parts[1],
                'mode': parts[2] if len(parts) == 3 else 'rw'}
        host_config = self.api.create_host_config(
            binds=binds or None, network_mode=conf.network,
            privileged=conf.privileged,
            nano_cpus=int(conf.cpus * 1e9) if conf.cpus else None,
            mem_limit=_memory_bytes(conf.memory) if conf.memory else None)
        container_name = f'crcache-{name}-{uuid.uuid4().hex[:6]}'
        labels = {LABEL_INSTANCE: name, LABEL_SOURCE: self.name,
                  LABEL_STORE: self.owner}
        created = self._call(
            f'creating a container for {name}', self.api.create_container,
            conf.image, command=['/bin/sh', '-c', conf.keep_alive_command],
            name=container_name, labels=labels, detach=True,
            working_dir=conf.workdir, environment=list(conf.env) or None,
            user=conf.user, host_config=host_config)
        ref = {'id': created['Id'], 'name': container_name}
        try:
            self._call(f'starting container {container_name}',
                       self.api.start, created['Id'])
        except BaseException:
            self._remove(ref)
            raise
        return ref

    def discard(self, refs: dict[str, base.Ref]) -> None:
        for name, ref in refs.items():
            if ref.get('id'):
                self._remove(ref)
            # Containers made for this instance whose id was never
            # recorded (a crash mid-provision) go too.
            for other in self._owned({LABEL_INSTANCE: name}):
                self._remove({'id': other['Id']})

    def _remove(self, ref: base.Ref) -> None:
        import docker.errors
        try:
            self._call('removing a container', self.api.remove_container,
                       ref['id'], force=True)
        except docker.errors.NotFound:
            pass  # already gone: that is what we wanted

    def _owned(self, extra: dict[str, str] | None = None) -> list[dict]:
        filters = [f'{LABEL_STORE}={self.owner}',
                   f'{LABEL_SOURCE}={self.name}']
        filters += [f'{k}={v}' for k, v in (extra or {}).items()]
        return self._call('listing containers', self.api.containers,
                          all=True, filters={'label': filters})

    def list_owned(self, store_id: str) -> dict[str, str | None]:
        return {c['Id'][:12]: c.get('Labels', {}).get(LABEL_INSTANCE)
                for c in self._owned()}

    def destroy_owned(self, resource_id: str) -> None:
        self._remove({'id': resource_id})

    def is_alive(self, ref: base.Ref, timeout: float = 10.0) -> bool:
        info = self._request('inspecting a container', 'GET',
                             f"/containers/{ref['id']}/json")
        return bool(info and info.get('State', {}).get('Running'))

    def concurrency(self, ref: base.Ref) -> int:
        if self.conf.cpus:
            return max(1, math.ceil(self.conf.cpus))
        return super().concurrency(ref)

    # -- running commands ----------------------------------------------------

    def _check_running(self, ref: base.Ref) -> dict:
        info = self._request('inspecting a container', 'GET',
                             f"/containers/{ref['id']}/json")
        if info is None:
            raise self._error(f"container {ref.get('name')} no longer "
                              'exists')
        state = info.get('State', {})
        if not state.get('Running'):
            raise self._error(
                f"container {ref.get('name')} is not running (it "
                f"{state.get('Status', 'stopped')}, exit code "
                f"{state.get('ExitCode')})")
        return info

    def run(self, ref: base.Ref, argv: list[str], stdin: int, stdout: int,
            stderr: int) -> int:
        from crcache.sources.docker import engine as dockerstream
        from crcache.transport import remotegroup
        tty = not argv and os.isatty(stdin)
        command = (['/bin/sh', '-c', cmdline.join(argv)] if argv
                   else ['/bin/sh', '-l'] if tty else ['/bin/sh'])
        signals = _ExecSignals(self, ref, reporting=not tty)
        if not tty:
            # Reports the command's process group on stderr (a terminal
            # would show the line), for signals to reach all of it.
            command = remotegroup.docker_argv(command, signals.nonce)
        created = None
        try:
            created = self._request(
                'starting a command', 'POST',
                f"/containers/{ref['id']}/exec",
                {'AttachStdin': True, 'AttachStdout': True,
                 'AttachStderr': True, 'Tty': tty, 'Cmd': command,
                 'User': self.conf.user or '',
                 **({'WorkingDir': self.conf.workdir}
                    if self.conf.workdir else {})})
        finally:
            if created is None:
                self._check_running(ref)  # the likely reason, said clearly
        exec_id = created['Id']
        try:
            sock, early = dockerstream.start(
                self.docker_host, API_VERSION, exec_id, tty, 30)
        except (OSError, ValueError) as err:
            raise self._error(f'cannot start a command in container '
                              f"{ref.get('name')}: {_reason(err)}")
        signals.exec_id = exec_id
        with process.foreground(process.REMOTE, ()) as job:
            job.started(signals)
            if tty:
                self._interactive(exec_id, sock, early, stdin, stdout)
            else:
                dockerstream.pump(sock, early, stdin, stdout, stderr, False,
                                  signals.report)
        result = self._request('reading the exit status', 'GET',
                               f'/exec/{exec_id}/json') or {}
        code = result.get('ExitCode')
        if code is None:
            self._check_running(ref)
            return 255
        return code

    def _interactive(self, exec_id: str, sock: Any, early: bytes,
                     stdin: int, stdout: int) -> None:
        import signal
        import termios
        import tty as tty_module

        from crcache.sources.docker import engine as dockerstream

        def resize(*args: object) -> None:
            size = os.get_terminal_size(stdin)
            try:
                self.api.exec_resize(exec_id, height=size.lines,
                                     width=size.columns)
            except Exception:
                pass  # a resize that fails only leaves the size stale

        saved = termios.tcgetattr(stdin)
        old = signal.signal(signal.SIGWINCH, resize)
        try:
            tty_module.setraw(stdin, termios.TCSADRAIN)
            resize()
            dockerstream.pump(sock, early, stdin, stdout, stdout, True)
        finally:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, old)

    # -- files -------------------------------------------------------------

    def _container_path(self, ref: base.Ref, path: str) -> str:
        if posixpath.isabs(path):
            return path
        workdir = self.conf.workdir
        if not workdir:
            info = self._check_running(ref)
            workdir = info.get('Config', {}).get('WorkingDir') or '/'
        return posixpath.normpath(posixpath.join(workdir, path))

    def _stat(self, ref: base.Ref, path: str) -> dict | None:
        """The engine's stat of a container path, or None if absent."""
        api = self.api
        response = self._call(
            f'looking at {path}', api.head,
            api._url('/containers/{0}/archive', ref['id']),
            params={'path': path})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._error(f'cannot look at {path} in container '
                              f"{ref.get('name')}: HTTP "
                              f'{response.status_code}')
        header = response.headers.get('X-Docker-Container-Path-Stat', '')
        return json.loads(base64.b64decode(header))

    def copy_in(self, ref: base.Ref, src: str, dst: str,
                recursive: bool) -> None:
        from crcache.transport import localcopy
        from crcache import progress
        from crcache.transport import tarcopy
        if not os.path.lexists(src):
            raise exceptions.CopyError(f'{src}: no such file or directory')
        localcopy.check_source(src, os.path.isdir(src), recursive)
        if os.path.isfile(src):
            # The archive's own headers come on top: a little more.
            progress.meter().expect(os.path.getsize(src))
        target = self._container_path(ref, dst)
        found = self._stat(ref, target)
        if found is not None and found['mode'] & _GO_DIR:
            into, name = target, os.path.basename(os.path.normpath(src))
        else:
            into, name = posixpath.split(target)
            parent = self._stat(ref, into)
            if parent is None or not parent['mode'] & _GO_DIR:
                # Named as the user wrote it, not as resolved here.
                raise exceptions.InstancePathError(
                    posixpath.dirname(dst.rstrip('/')) or into,
                    'no such directory' if parent is None
                    else 'not a directory')
        stream = tarcopy.archive_stream(src, name, follow=not recursive)
        self._call(f'copying to {into}', self.api.put_archive, ref['id'],
                   into, stream)

    def copy_out(self, ref: base.Ref, src: str, dst: str,
                 recursive: bool) -> None:
        import docker.errors

        from crcache import progress
        from crcache.transport import untar
        path = self._container_path(ref, src)
        name = posixpath.basename(path.rstrip('/')) or path
        try:
            stat = self._stat(ref, path)
            if stat is None:
                raise docker.errors.NotFound('absent')
            if stat.get('linkTarget') and not recursive:
                # Without -r a link named as SRC is followed, as cp does.
                path = stat['linkTarget']
                stat = self._stat(ref, path)
            if stat is not None and stat['mode'] & _GO_DIR \
                    and not recursive:
                raise exceptions.InstancePathError(
                    src, 'is a directory (use -r to copy directories)')
            if stat is not None and not stat['mode'] & _GO_DIR:
                progress.meter().expect(stat.get('size'))
            chunks, _ = self._call(f'copying from {src}',
                                   self.api.get_archive, ref['id'], path)
        except docker.errors.NotFound:
            raise exceptions.InstancePathError(src,
                                               'no such file or directory')
        base_name = posixpath.basename(path.rstrip('/')) or path
        with untar.landing(dst, base_name, name) as into:
            untar.extract(_ChunkReader(chunks), into, base_name, recursive,
                          src)


#: Go's os.ModeDir, as the engine reports modes.
_GO_DIR = 1 << 31


class _ChunkReader:
    """A file-like view of an iterator of byte chunks, for tarfile."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._buffer = b''

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        if size < 0:
            data, self._buffer = self._buffer, b''
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


class _ExecSignals:
    """Signals for an exec's process group, by ``kill`` in the container.

    The exec runs through :mod:`crcache.transport.remotegroup`'s wrapper, whose
    report (taken out of stderr by :attr:`report`) says which group to
    signal; a signal that comes before it is held until it does. An exec
    with a terminal has no report: its process, which leads its group,
    is found from the engine's pid for it (an engine on this machine
    only).
    """

    def __init__(self, source: DockerSource, ref: base.Ref,
                 reporting: bool) -> None:
        from crcache.transport import remotegroup
        self.source = source
        self.ref = ref
        self.reporting = reporting
        self.exec_id: str | None = None
        self.nonce = remotegroup.new_nonce()
        self.report = remotegroup.Report(self.nonce, self._located)
        self.where: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int | None]] = []

    def _located(self, where: tuple[int, str]) -> None:
        with self._lock:
            self.where = where
            pending, self._pending = self._pending, []
        for name, after in pending:
            threading.Thread(target=self.kill, args=(name, after),
                             daemon=True).start()

    def _where(self) -> tuple[int, str] | None:
        if self.where is not None or not self.exec_id:
            return self.where
        # Nothing reported (yet): the engine's pid for the exec, which
        # leads its group, as the container sees it.
        info = self.source._request('inspecting a command', 'GET',
                                    f'/exec/{self.exec_id}/json') or {}
        pid = _namespace_pid(info.get('Pid'))
        return (pid, '-') if pid else None

    def send_signal(self, signum: int) -> None:
        import signal
        self.signal(signal.Signals(signum).name[3:])

    def signal(self, name: str, then_kill_after: int | None = None) -> None:
        with self._lock:
            if (self.where is None and self.reporting
                    and not self.report.done):
                self._pending.append((name, then_kill_after))
                return
        threading.Thread(target=self.kill, args=(name, then_kill_after),
                         daemon=True).start()

    def kill(self, name: str, then_kill_after: int | None = None) -> bool:
        """Run ``kill`` for the group in the container; False if it could
        not be started (the command may have finished)."""
        from crcache.transport import remotegroup
        try:
            where = self._where()
            if where is None:
                return False
            created = self.source._request(
                'signalling a command', 'POST',
                f"/containers/{self.ref['id']}/exec",
                {'Cmd': remotegroup.kill_argv(name, where, then_kill_after),
                 'User': '0'})
            if created is None:
                return False
            self.source._request('signalling a command', 'POST',
                                 f"/exec/{created['Id']}/start",
                                 {'Detach': True, 'Tty': False})
        except Exception:
            return False  # best effort: the command may have finished
        return True

    def abandon(self) -> str:
        from crcache.transport import remotegroup
        if self.kill('HUP', remotegroup.HANG_UP_GRACE):
            return 'is being hung up on'
        return 'may still be running'


def _namespace_pid(host_pid: int | None) -> int | None:
    """The pid a host process has inside its container's namespace."""
    if not host_pid:
        return None
    try:
        with open(f'/proc/{host_pid}/status') as f:
            for line in f:
                if line.startswith('NSpid:'):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


def http_client_error() -> type:
    import http.client
    return http.client.HTTPException


def _reason(err: BaseException) -> str:
    text = str(err)
    if 'No such file' in text or 'FileNotFoundError' in text:
        return 'no such socket'
    if 'Connection refused' in text:
        return 'connection refused'
    if 'Permission denied' in text:
        return 'permission denied'
    return text.splitlines()[0][:200] if text else type(err).__name__


def list_opts() -> list[tuple[str | None, list]]:
    """``oslo.config.opts`` entry point for the docker keys."""
    return [(None, DockerSource.opts)]
