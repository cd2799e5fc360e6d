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

import math
import os
import threading
import uuid
from typing import Any

from crcache.transport import cmdline
from crcache import exceptions
from crcache.transport import process
from crcache.sources import base
from crcache.sources.docker import settings

#: The Engine API version spoken: Docker 20.10 and later.
API_VERSION = '1.41'
DEFAULT_SOCKET = 'unix:///var/run/docker.sock'
LABEL_INSTANCE = 'crcache.instance'
LABEL_SOURCE = 'crcache.source'
LABEL_STORE = 'crcache.store'


class DockerSource(base.BackendSource):
    """Containers from an image, on a Docker engine."""

    warm_modules = ('crcache.sources.docker.engine', 'docker',
                    'docker.errors', 'requests.exceptions')
    opts = settings.OPTS
    supports_snapshot = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._lock = threading.Lock()

    def validate(self) -> list[tuple[str, str]]:
        return super().validate() + settings.problems(self.conf)

    # -- the engine ----------------------------------------------------------

    @property
    def docker_host(self) -> str:
        return (self.conf.docker_host or os.environ.get('DOCKER_HOST')
                or DEFAULT_SOCKET)

    def error(self, message: str) -> exceptions.SourceError:
        return exceptions.SourceError(self.name, message)

    @property
    def api(self) -> Any:
        """The SDK's low-level client, made on first use."""
        with self._lock:
            if self._client is None:
                try:
                    import docker
                except ImportError:
                    raise self.error(
                        'the Docker SDK for Python is not installed (pip '
                        'install docker)')
                self._client = docker.APIClient(
                    base_url=self.docker_host, version=API_VERSION,
                    timeout=120)
            return self._client

    def call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the engine; its failures become one-line errors."""
        import docker.errors
        import requests.exceptions
        try:
            return func(*args, **kwargs)
        except docker.errors.NotFound:
            raise
        except docker.errors.APIError as err:
            explanation = getattr(err, 'explanation', None) or str(err)
            raise self.error(f'{what}: {explanation}')
        except (requests.exceptions.ConnectionError, OSError) as err:
            raise self.error(
                f'cannot reach the Docker engine at {self.docker_host}: '
                f'{reason(err)}')

    def request(self, what: str, method: str, path: str,
                 body: dict | None = None) -> Any:
        """A hot-path API call (see :mod:`.engine`); None if 404."""
        from crcache.sources.docker import engine as dockerstream
        try:
            status, data = dockerstream.request(
                self.docker_host, method, f'/v{API_VERSION}{path}', body)
        except (OSError, ValueError, http_client_error()) as err:
            raise self.error(
                f'cannot reach the Docker engine at {self.docker_host}: '
                f'{reason(err)}')
        if status == 404:
            return None
        if status >= 400:
            message = data.get('message') if isinstance(data, dict) else data
            raise self.error(f'{what}: {message}')
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
        image = self.conf.docker_image
        try:
            self.call(f'looking up image {image}', self.api.inspect_image,
                       image)
            return
        except docker.errors.NotFound:
            pass
        if self.conf.docker_pull == 'never':
            raise self.error(
                f'image {image} is not on the engine at {self.docker_host} '
                'and docker_pull=never')
        repository, _, tag = image.rpartition(':')
        if not repository or '/' in tag:
            repository, tag = image, 'latest'
        try:
            self.call(f'pulling image {image}', self.api.pull, repository,
                       tag=tag)
        except docker.errors.NotFound:
            raise self.error(f'image {image} was not found to pull')

    def _create(self, name: str, image: str | None = None) -> base.Ref:
        conf = self.conf
        binds = {}
        for item in conf.docker_volumes:
            parts = item.split(':')
            binds[os.path.abspath(os.path.expanduser(parts[0]))] = {
                'bind': parts[1],
                'mode': parts[2] if len(parts) == 3 else 'rw'}
        host_config = self.api.create_host_config(
            binds=binds or None, network_mode=conf.docker_network,
            privileged=conf.docker_privileged,
            nano_cpus=(int(conf.docker_cpus * 1e9) if conf.docker_cpus
                       else None),
            mem_limit=(settings.memory_bytes(conf.docker_memory)
                       if conf.docker_memory else None))
        container_name = f'crcache-{name}-{uuid.uuid4().hex[:6]}'
        labels = {LABEL_INSTANCE: name, LABEL_SOURCE: self.name,
                  LABEL_STORE: self.owner}
        created = self.call(
            f'creating a container for {name}', self.api.create_container,
            image or conf.docker_image,
            command=['/bin/sh', '-c', conf.docker_keep_alive_command],
            name=container_name, labels=labels, detach=True,
            working_dir=conf.docker_workdir,
            environment=list(conf.docker_env) or None,
            user=conf.docker_user, host_config=host_config)
        ref = {'id': created['Id'], 'name': container_name}
        try:
            self.call(f'starting container {container_name}',
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

    # -- snapshots: committed images (see .captures) -------------------------

    def snapshot_basis(self) -> dict[str, str]:
        from crcache.sources.docker import captures
        return captures.basis(self)

    def take_capture(self, ref: base.Ref, fingerprint: str) -> str:
        from crcache.sources.docker import captures
        return captures.capture(self, ref, fingerprint)

    def provision_from(self, names: list[str],
                       capture: str) -> dict[str, base.Ref]:
        from crcache.sources.docker import captures
        import docker.errors
        refs = {}
        for name in names:
            try:
                refs[name] = self._create(name, image=capture)
            except docker.errors.NotFound:
                raise captures.missing(self, capture)
            except exceptions.SourceError:
                if not captures.exists(self, capture):
                    raise captures.missing(self, capture)
                raise
        return refs

    def list_captures(self, store_id: str) -> dict[str, str]:
        from crcache.sources.docker import captures
        return captures.listed(self, store_id)

    def drop_capture(self, capture: str) -> None:
        from crcache.sources.docker import captures
        captures.drop(self, capture)

    def _remove(self, ref: base.Ref) -> None:
        import docker.errors
        try:
            self.call('removing a container', self.api.remove_container,
                       ref['id'], force=True)
        except docker.errors.NotFound:
            pass  # already gone: that is what we wanted

    def _owned(self, extra: dict[str, str] | None = None) -> list[dict]:
        filters = [f'{LABEL_STORE}={self.owner}',
                   f'{LABEL_SOURCE}={self.name}']
        filters += [f'{k}={v}' for k, v in (extra or {}).items()]
        return self.call('listing containers', self.api.containers,
                          all=True, filters={'label': filters})

    def list_owned(self, store_id: str) -> dict[str, str | None]:
        return {c['Id'][:12]: c.get('Labels', {}).get(LABEL_INSTANCE)
                for c in self._owned()}

    def destroy_owned(self, resource_id: str) -> None:
        self._remove({'id': resource_id})

    def is_alive(self, ref: base.Ref, timeout: float = 10.0) -> bool:
        info = self.request('inspecting a container', 'GET',
                             f"/containers/{ref['id']}/json")
        return bool(info and info.get('State', {}).get('Running'))

    def concurrency(self, ref: base.Ref) -> int:
        if self.conf.docker_cpus:
            return max(1, math.ceil(self.conf.docker_cpus))
        return super().concurrency(ref)

    # -- running commands ----------------------------------------------------

    def check_running(self, ref: base.Ref) -> dict:
        info = self.request('inspecting a container', 'GET',
                             f"/containers/{ref['id']}/json")
        if info is None:
            raise self.error(f"container {ref.get('name')} no longer "
                              'exists')
        state = info.get('State', {})
        if not state.get('Running'):
            raise self.error(
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
        from crcache.sources.docker.signals import ExecSignals
        signals = ExecSignals(self, ref, reporting=not tty)
        if not tty:
            # Reports the command's process group on stderr (a terminal
            # would show the line), for signals to reach all of it.
            command = remotegroup.docker_argv(command, signals.nonce)
        created = None
        try:
            created = self.request(
                'starting a command', 'POST',
                f"/containers/{ref['id']}/exec",
                {'AttachStdin': True, 'AttachStdout': True,
                 'AttachStderr': True, 'Tty': tty, 'Cmd': command,
                 'User': self.conf.docker_user or '',
                 **({'WorkingDir': self.conf.docker_workdir}
                    if self.conf.docker_workdir else {})})
        finally:
            if created is None:
                self.check_running(ref)  # the likely reason, said clearly
        exec_id = created['Id']
        try:
            sock, early = dockerstream.start(
                self.docker_host, API_VERSION, exec_id, tty, 30)
        except (OSError, ValueError) as err:
            raise self.error(f'cannot start a command in container '
                              f"{ref.get('name')}: {reason(err)}")
        signals.exec_id = exec_id
        with process.foreground(process.REMOTE, ()) as job:
            job.started(signals)
            if tty:
                self._interactive(exec_id, sock, early, stdin, stdout)
            else:
                dockerstream.pump(sock, early, stdin, stdout, stderr, False,
                                  signals.report)
        result = self.request('reading the exit status', 'GET',
                               f'/exec/{exec_id}/json') or {}
        code = result.get('ExitCode')
        if code is None:
            self.check_running(ref)
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

    def copy_in(self, ref: base.Ref, src: str, dst: str,
                recursive: bool) -> None:
        from crcache.sources.docker import files
        files.copy_in(self, ref, src, dst, recursive)

    def copy_out(self, ref: base.Ref, src: str, dst: str,
                 recursive: bool) -> None:
        from crcache.sources.docker import files
        files.copy_out(self, ref, src, dst, recursive)


def http_client_error() -> type:
    import http.client
    return http.client.HTTPException


def reason(err: BaseException) -> str:
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
    return settings.list_opts()
