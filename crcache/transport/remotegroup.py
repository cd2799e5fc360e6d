"""Finding and signalling a command's process group on another machine.

A remote command can only be signalled from the remote side. OpenSSH
refuses the ``signal`` channel request for sessions without privilege
separation (every root login) and some servers ignore it; the Docker
engine has no such call at all. So crcache starts a remote command
through a few lines of POSIX sh that report, as the first line of its
stderr, which process leads the command's process group, tagged with a
per-run random nonce; :class:`Report` takes that line out of the stream
again. To signal the command, crcache runs :func:`kill_argv` next to it
(an ssh exec channel on the same connection, an exec in the same
container): ``kill -SIG -PGID``, the whole group, as a terminal
signals a foreground job. The report also carries the leader's start
time (from ``/proc``), which the kill checks first, so a pid used again
after the command ended is never signalled.

Over ssh, the login shell runs the wrapper and then the user's command
line itself, exactly as ``ssh host LINE`` would (rc files, bash-isms and
all). OpenSSH makes that shell a session and group leader (``setsid``
for sessions without a pty). Where a server does not, the group kill
fails (no group has the shell's pid as its id) and only the shell is
signalled. The wrapper also leaves a watcher behind, its descriptors on
/dev/null so that it never holds the channel open: once a second it
checks whether the shell was orphaned (its parent, the server's session
process, went away with the connection, as when crcache is killed) and
if so hangs up on the group: SIGHUP, then SIGKILL two seconds later. It
ends as soon as the shell does.

Everything here is POSIX sh that dash and busybox run, inside one
single-quoted word without backslashes or single quotes, so that every
login shell (sh, bash, zsh, fish, tcsh) parses the wrapper the same.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

#: Seconds between SIGHUP and SIGKILL when a command is hung up on.
HANG_UP_GRACE = 2

# f PID: sets p=PID, and q (its parent) and t (its start time) from
# /proc when there is one (t=- otherwise).
_FIND = ('f() { p=$1 q= t=-; if read s </proc/$p/stat; then '
         's=${s##*") "}; set -- $s; q=$2 t=${20}; fi 2>/dev/null; }; ')
# k SIG: signals p's group (p alone if it leads none), unless p is now
# another process than the one started at t. "kill -SIG -PGID" is the
# one spelling dash, bash and busybox all take (busybox refuses "--",
# dash needs it after "-s SIG", and both still signal the group).
_KILL = ('k() { g=$1; if read s </proc/$p/stat; then s=${s##*") "}; '
         'set -- $s; [ "$t" = - ] || [ "${20}" = "$t" ] || return 0; '
         '[ "$3" = "$p" ] || { kill -$g $p; return; }; fi 2>/dev/null; '
         'kill -$g -$p 2>/dev/null || kill -$g $p 2>/dev/null; }; ')
# The watcher (see the module doc): p's parent was q when it started.
_WATCH = ('[ "$t" = - ] || (trap "" INT QUIT TERM HUP; ' + _KILL
          + 'while :; do sleep 1 || exit; '
          'read s </proc/$p/stat || exit; s=${s##*") "}; set -- $s; '
          '[ "${20}" = "$t" ] || exit; [ "$2" = "$q" ] || break; '
          f'done 2>/dev/null; k HUP; sleep {HANG_UP_GRACE}; k KILL) '
          '</dev/null >/dev/null 2>&1 & ')
# For ssh: the login shell ($PPID) is what leads the command's group.
_SSH = _FIND + 'f $PPID; echo "$1 $p $t" >&2; ' + _WATCH
# For docker: the exec's first process leads its group; it reports
# itself and becomes the command.
_DOCKER = _FIND + 'n=$1; shift; f $$; echo "$n $p $t" >&2; exec "$@"'
# Arguments: SIG PID START [SECONDS, then SIGKILL].
_SIGNAL = ('p=$2 t=$3; ' + _KILL
           + 'k $1; [ -z "$4" ] || { sleep $4; k KILL; }')


def new_nonce() -> str:
    """A fresh tag for one command's report line."""
    return 'crcache-' + os.urandom(12).hex()


def ssh_line(line: str, nonce: str) -> str:
    """The line for an ssh exec request that runs ``line`` as usual."""
    return f"/bin/sh -c '{_SSH}' crcache {nonce}; {line}"


def docker_argv(argv: list[str], nonce: str) -> list[str]:
    """An exec's command that reports itself and then runs ``argv``."""
    return ['/bin/sh', '-c', _DOCKER, 'crcache', nonce, *argv]


def kill_argv(signame: str, where: tuple[int, str],
              then_kill_after: int | None = None) -> list[str]:
    """The command that sends ``signame`` to the group reported at
    ``where``; with ``then_kill_after``, SIGKILL follows that many
    seconds later (a hang-up)."""
    if not re.fullmatch(r'[A-Z][A-Z0-9]*', signame):
        raise ValueError(f'not a signal name: {signame!r}')
    pid, start = where
    argv = ['/bin/sh', '-c', _SIGNAL, 'crcache', signame, str(pid), start]
    if then_kill_after is not None:
        argv.append(str(then_kill_after))
    return argv


def kill_line(signame: str, where: tuple[int, str],
              then_kill_after: int | None = None) -> str:
    """:func:`kill_argv` as a line for any login shell."""
    argv = kill_argv(signame, where, then_kill_after)
    return f"{argv[0]} {argv[1]} '{argv[2]}' " + ' '.join(argv[3:])


_REPORT = re.compile(rb' ([0-9]+) ([0-9]+|-)\n')


class Report:
    """Takes the wrapper's report line out of a stderr stream.

    Feed it the stream's chunks in order: it returns the bytes to pass
    on, everything but the report line, in order and unchanged. Until the
    report is found, only a trailing part that could begin it is held
    back; :meth:`flush` returns that at the end of the stream. When the
    line is found, ``found`` is called with (pid, start time).
    """

    def __init__(self, nonce: str,
                 found: Callable[[tuple[int, str]], None]) -> None:
        self.tag = nonce.encode()
        self.found = found
        self.done = False
        self._held = b''

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        data = self._held + data
        self._held = b''
        at = data.find(self.tag)
        if at < 0:
            keep = self._partial(data)
            self._held = data[len(data) - keep:] if keep else b''
            return data[:len(data) - keep]
        end = data.find(b'\n', at)
        if end < 0:
            if len(data) - at > 128:  # too long for a report line
                self.done = True
                return data
            self._held = data[at:]
            return data[:at]
        match = _REPORT.fullmatch(data, at + len(self.tag), end + 1)
        self.done = True
        if match:
            self.found((int(match.group(1)), match.group(2).decode()))
        return data[:at] + data[end + 1:]

    def _partial(self, data: bytes) -> int:
        """How many bytes at the end of ``data`` could begin the tag."""
        for size in range(min(len(self.tag) - 1, len(data)), 0, -1):
            if self.tag.startswith(data[-size:]):
                return size
        return 0

    def flush(self) -> bytes:
        """What is still held back, at the end of the stream."""
        held, self._held = self._held, b''
        self.done = True
        return held
