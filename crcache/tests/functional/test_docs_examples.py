"""The documentation's shell examples, run as printed, so they cannot rot.

The pages with examples (``doc/source/install.rst``, ``guide.rst`` and
``sources.rst``) are read with the conventions below and replayed in
bash against the installed ``crcache`` command, in a temporary home of
their own, and what each command prints is compared with what the page
shows.

Conventions (the pages follow them; a page that breaks one fails here):

* ``.. code-block:: console`` holds examples: a line starting ``$ `` is
  a command (a line ending in ``\\`` continues on the next), the lines up
  to the next command are what it prints, stdout and stderr together.
  Every command exits 0, except one followed by ``$ echo $?``, which
  shows its exit status instead.
* A code block whose ``:caption:`` is a path (``~/...`` or a path
  relative to the project, such as ``.crcache/sources/pool/source.conf``)
  is that file's content: it is written where the example says, when the
  replay reaches it (made executable if it starts with ``#!``).
* ``.. untested: REASON`` just before a console block leaves it out
  (installing from the network, say); there are few such blocks.
* Each page is one session, in one bash process, starting in
  ``~/project``: variables, the working directory and crcache's state
  carry over from one block to the next. ``sources.rst`` is one session
  per section, each with the servers it needs: the ssh section gets two
  real sshd (reached as ``build1.example.com`` and ``build2.example.com``
  through ``~/.ssh/config``, with their keys in ``~/.ssh/known_hosts``),
  the docker section a real Docker engine (``$DOCKER_HOST``) holding the
  test image under the name the page uses.
* The pages show a user whose home is ``/home/me``: the session's real
  home is written so in what commands print. Output is compared line by
  line with runs of blanks taken as one (table columns widen with their
  contents); ``...`` in a shown line stands for any text (a CPU count, a
  process id; on a line of its own, for any lines), and any UTC time
  stamp shown (``2026-12-02T06:30:01Z``, with or without milliseconds)
  for any time stamp.
* Progress lines on stderr (``crcache: <time stamp> ...``) depend on how
  long the work took: printed ones are ignored unless the example shows
  some, and then the shown ones must all be there, in any order (work in
  parallel finishes in any order).
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import subprocess
import tempfile

import testtools

from crcache.tests.functional import base

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
DOCS = os.path.join(REPO, 'doc', 'source')
#: The pages whose examples are run.
PAGES = ('install.rst', 'guide.rst', 'sources.rst')
#: The home directory the pages show.
SHOWN_HOME = '/home/me'
#: The most examples the pages may leave untested.
MOST_UNTESTED = 6
#: The examples of the original user's guide (crcache-users-guide.rst),
#: which must all appear, and work (the guide's ``release pool0`` shows
#: the error that typo gets).
SEED_EXAMPLES = (
    'pip install crcache',
    'crcache status',
    'crcache status -t',
    'crcache status -v',
    'crcache status -a',
    'crcache -s pool acquire',
    'crcache status pool',
    'crcache run -s pool-0 echo foo',
    'crcache cp pool-0:foo bar',
    'crcache release pool0',
)

STAMP = r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{3})?Z'
PROGRESS = re.compile(rf'crcache: {STAMP} ')
_SHOWN = re.compile(rf'\.\.\.|{STAMP}')
_DIRECTIVE = re.compile(r'\.\. code-block:: *(\S*)\s*$')
_OPTION = re.compile(r'\s+:(\w[\w-]*):\s*(.*)$')
_TITLE_RULE = re.compile(r'(=+|-+|~+|\^+)$')


@dataclasses.dataclass
class Command:
    """One ``$`` line of a console block and what it is shown to print."""

    text: str
    shown: list[str]
    line: int
    check_status: bool = True


@dataclasses.dataclass
class File:
    """A code block captioned with a path: a file to write."""

    path: str
    content: str
    line: int


@dataclasses.dataclass
class Block:
    """A code block: where it is, its language, options and lines."""

    page: str
    line: int
    language: str
    options: dict[str, str]
    lines: list[str]
    untested: str | None
    section: str
    #: The page's line numbers (1-based) the block spans, directive
    #: included.
    span: range = range(0)


def read_blocks(page: str) -> list[Block]:
    """The code blocks of a page, with the section each is in."""
    with open(os.path.join(DOCS, page)) as f:
        lines = f.read().splitlines()
    blocks = []
    section = ''
    untested = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if (i + 1 < len(lines) and line.strip()
                and re.match(r'=+$', lines[i + 1])
                and not re.match(r'=+$', line)
                and len(lines[i + 1]) >= len(line.rstrip())):
            # A top-level section (underlined with =; the page's own title
            # is overlined too, and comes first).
            if i == 0 or not re.match(r'=+$', lines[i - 1]):
                section = line.strip()
        found = re.match(r'\.\. untested:\s*(.*)$', line)
        if found:
            untested = found.group(1).strip() or None
            if untested is None:
                raise AssertionError(f'{page}:{i + 1}: untested needs a '
                                     'reason')
            i += 1
            continue
        directive = _DIRECTIVE.match(line)
        if not directive:
            if line.strip() and not line.startswith('..'):
                untested = None
            i += 1
            continue
        start = i + 1
        i += 1
        options = {}
        while i < len(lines) and _OPTION.match(lines[i]):
            key, value = _OPTION.match(lines[i]).groups()
            options[key] = value.strip()
            i += 1
        first = i + 1  # the 1-based line of the body's first line
        body = []
        while i < len(lines) and (not lines[i].strip()
                                  or lines[i].startswith(' ')):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
            first += 1
        indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()),
                     default=0)
        blocks.append(Block(page, first, directive.group(1), options,
                            [b[indent:] for b in body], untested, section,
                            range(start, i + 1)))
        untested = None
    return blocks


def is_path_caption(caption: str | None) -> bool:
    """Whether a block's caption names the file it holds."""
    return bool(caption) and ' ' not in caption and '/' in caption


def commands(block: Block) -> list[Command]:
    """The commands of a console block, with their shown output."""
    found: list[Command] = []
    lines = list(block.lines)
    n = 0
    while n < len(lines):
        line = lines[n]
        if line.startswith('$ '):
            text = line[2:]
            start = block.line + n
            while text.endswith('\\') and n + 1 < len(lines):
                n += 1
                text += '\n' + lines[n]
            found.append(Command(text, [], start))
        elif not found:
            raise AssertionError(
                f'{block.page}:{block.line}: a console block starts with '
                f'a command ("$ "), not {line!r}')
        else:
            found[-1].shown.append(line)
        n += 1
    for first, second in zip(found, found[1:]):
        if second.text == 'echo $?':
            first.check_status = False
    return found


def steps(page: str, section: str | None = None
          ) -> tuple[list[Command | File], list[Block]]:
    """What a session replays, in order, and the blocks it leaves out."""
    replayed: list[Command | File] = []
    skipped = []
    for block in read_blocks(page):
        if section is not None and block.section != section:
            continue
        caption = block.options.get('caption')
        if block.language == 'console':
            if block.untested:
                skipped.append(block)
            else:
                replayed.extend(commands(block))
        elif is_path_caption(caption):
            replayed.append(File(caption, '\n'.join(block.lines) + '\n',
                                 block.line))
    return replayed, skipped


def _normal(line: str) -> str:
    return ' '.join(line.split())


def _pattern(shown: str) -> str:
    parts = []
    last = 0
    for found in _SHOWN.finditer(shown):
        parts.append(re.escape(shown[last:found.start()]))
        parts.append(r'[\s\S]*?' if found.group() == '...' else STAMP)
        last = found.end()
    parts.append(re.escape(shown[last:]))
    return ''.join(parts)


def mismatch(shown: list[str], printed: str) -> str | None:
    """Why ``printed`` is not what ``shown`` says; None if it is."""
    got = [_normal(line) for line in printed.splitlines()]
    want = [_normal(line) for line in shown]
    for lines in (got, want):
        while lines and not lines[-1]:
            lines.pop()
    want_progress = [line for line in want if PROGRESS.match(line)]
    got_progress = [line for line in got if PROGRESS.match(line)]
    got = [line for line in got if not PROGRESS.match(line)]
    want = [line for line in want if not PROGRESS.match(line)]
    if not re.fullmatch(_pattern('\n'.join(want)), '\n'.join(got)):
        return 'output differs'
    unmatched = list(got_progress)
    for line in want_progress:
        for candidate in unmatched:
            if re.fullmatch(_pattern(line), candidate):
                unmatched.remove(candidate)
                break
        else:
            return f'no progress line like {line!r}'
    return None


class DocsSession(base.CLITestCase):
    """Replays a page (or a section of one) in one bash process."""

    def setUp(self) -> None:
        super().setUp()
        # Nothing of the real user's: the ssh tests' fixtures add keys.
        self.ssh_dir = os.path.join(self.home, '.ssh')
        self.env['SHELL'] = '/bin/sh'

    def replay(self, page: str, section: str | None = None,
               timeout: float = 300) -> None:
        """Run a page's examples in order; fail on the first mismatch."""
        replayed, _ = steps(page, section)
        self.assertTrue(replayed, f'no examples in {page} {section or ""}')
        script = ['cd "$HOME/project" || exit 99', '__rc=0']
        for number, step in enumerate(replayed):
            if isinstance(step, File):
                path = step.path
                if path.startswith('~/'):
                    path = '"$HOME"/' + _quote(path[2:])
                else:
                    path = _quote(path)
                script.append(f'mkdir -p "$(dirname {path})" && '
                              f"cat > {path} <<'__DOCS_EOF__'\n"
                              f'{step.content}__DOCS_EOF__')
                if step.content.startswith('#!'):
                    script.append(f'chmod 755 {path}')
                script.append(f"printf '\\n\\036{number} 0\\n'")
            else:
                script.append(f'(exit $__rc); {{ {step.text}\n}} 2>&1; '
                              '__rc=$?')
                script.append(f"printf '\\n\\036{number} %d\\n' "
                              '"$__rc"')
        with tempfile.NamedTemporaryFile('w', suffix='.sh',
                                         dir=self.home,
                                         delete=False) as f:
            f.write('\n'.join(script) + '\n')
        proc = subprocess.run(
            ['bash', '--noprofile', '--norc', f.name],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=self.env, cwd=self.project,
            timeout=timeout)
        output = proc.stdout.decode(errors='replace').replace(
            os.path.realpath(self.home), SHOWN_HOME).replace(
            self.home, SHOWN_HOME)
        chunks = output.split('\036')
        leftover = chunks[-1]
        for number, step in enumerate(replayed):
            where = f'{page}:{step.line}'
            self.assertLess(number + 1, len(chunks),
                            f'{where}: the session stopped before this '
                            f'step; it printed:\n{output[-3000:]}')
            head, _, _ = chunks[number + 1].partition('\n')
            got_number, status = (int(x) for x in head.split())
            self.assertEqual(number, got_number)
            printed = chunks[number]
            if number:
                printed = printed.partition('\n')[2]
            printed = printed[:-1] if printed.endswith('\n') else printed
            if isinstance(step, File):
                continue
            if step.check_status:
                self.assertEqual(
                    0, status, f'{where}: $ {step.text}\nexited {status}, '
                    f'printing:\n{printed}')
            problem = mismatch(step.shown, printed)
            if problem:
                self.fail(f'{where}: $ {step.text}\n{problem}; the page '
                          'shows:\n' + '\n'.join(step.shown)
                          + '\n--- but it printed:\n' + printed)
        self.assertEqual('', leftover.partition('\n')[2].strip())


def _quote(path: str) -> str:
    import shlex
    return shlex.quote(path)


class TestInstall(DocsSession):

    def test_quick_start(self) -> None:
        self.replay('install.rst')


class TestGuide(DocsSession):

    def test_guide(self) -> None:
        self.replay('guide.rst')


class TestSources(DocsSession):

    def test_local(self) -> None:
        self.replay('sources.rst', 'local')

    def test_pool(self) -> None:
        self.replay('sources.rst', 'pool')

    def test_ssh(self) -> None:
        from crcache.tests.functional import sshd
        base.require_program(self, sshd.SSHD, 'openssh-server')
        os.makedirs(self.ssh_dir, mode=0o700)
        config = []
        known = []
        for host in ('build1.example.com', 'build2.example.com'):
            server = self.useFixture(sshd.SSHServer())
            config.append(f'Host {host}\n'
                          f'    HostName 127.0.0.1\n'
                          f'    Port {server.port}\n'
                          f'    User {server.user}\n'
                          f'    IdentityFile {server.client_key}\n')
            known.append(server.known_hosts_line() + '\n')
        with open(os.path.join(self.ssh_dir, 'config'), 'w') as f:
            f.write('\n'.join(config))
        with open(os.path.join(self.ssh_dir, 'known_hosts'), 'w') as f:
            f.writelines(known)
        # The connection holders the session leaves go with the test.
        runtime = os.path.join(self.home, 'run')
        os.mkdir(runtime, 0o700)
        self.env['XDG_RUNTIME_DIR'] = runtime
        self.env['CRCACHE_AGENT'] = '0'
        self.addCleanup(_stop_processes_under, runtime)
        self.replay('sources.rst', 'ssh')

    def test_docker(self) -> None:
        from crcache.tests.functional import dockerd
        host, image = dockerd.engine(self)
        client = dockerd._client(host)
        repository, tag = DOCKER_IMAGE.rsplit(':', 1)
        client.tag(image, repository, tag)
        self.addCleanup(client.remove_image, DOCKER_IMAGE)
        self.addCleanup(lambda: dockerd.remove_containers(
            host, dockerd.store_id(self)))
        self.env['DOCKER_HOST'] = host
        self.replay('sources.rst', 'docker')


#: The image sources.rst's docker example names (the test image, tagged
#: so for the test).
DOCKER_IMAGE = 'registry.example.com/build/debian:bookworm'


def _stop_processes_under(directory: str) -> None:
    """SIGTERM every process whose command line names ``directory``."""
    import signal
    for pid, _, _, _ in base.processes():
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmdline = f.read()
        except OSError:
            continue
        if directory.encode() in cmdline:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


class TestConventions(testtools.TestCase):
    """The pages keep to the conventions the replay relies on."""

    def test_sources_sessions_are_all_replayed(self) -> None:
        sections = {b.section for b in read_blocks('sources.rst')
                    if b.language == 'console' and not b.untested}
        self.assertEqual({'local', 'pool', 'ssh', 'docker'}, sections)

    def test_examples_are_console_blocks(self) -> None:
        # A "$ " line outside a console block would go untested.
        for page in PAGES:
            consoles = [b.span for b in read_blocks(page)
                        if b.language == 'console']
            with open(os.path.join(DOCS, page)) as f:
                for number, line in enumerate(f, 1):
                    if line.lstrip().startswith('$ '):
                        self.assertTrue(
                            any(number in span for span in consoles),
                            f'{page}:{number}: a shell example outside '
                            f'a console block: {line.strip()}')

    def test_few_untested(self) -> None:
        skipped = [b for page in PAGES for b in read_blocks(page)
                   if b.language == 'console' and b.untested]
        self.assertLessEqual(len(skipped), MOST_UNTESTED,
                             [f'{b.page}:{b.line}' for b in skipped])

    def test_seed_examples_appear(self) -> None:
        shown = {c.text for page in PAGES for b in read_blocks(page)
                 if b.language == 'console' for c in commands(b)}
        for example in SEED_EXAMPLES:
            self.assertIn(example, shown)

    def test_every_command_in_the_guide(self) -> None:
        parser = configparser.ConfigParser()
        parser.read(os.path.join(REPO, 'setup.cfg'))
        names = [line.split('=')[0].strip() for line in
                 parser['entry_points']['crcache.cmd'].splitlines()
                 if line.strip()]
        self.assertIn('acquire', names)
        run = [c.text for b in read_blocks('guide.rst')
               if b.language == 'console' and not b.untested
               for c in commands(b)]
        for name in names:
            # cliff runs snapshot_list as "snapshot list".
            words = name.replace('_', ' ')
            self.assertTrue(
                any(re.search(rf'\bcrcache( -\S+( [^-]\S*)?)* {words}\b',
                              c) for c in run),
                f'guide.rst runs no example of crcache {words}')

    def test_readme_commands_are_the_install_page(self) -> None:
        with open(os.path.join(REPO, 'README.md')) as f:
            readme = f.read()
        shown = {c.text for b in read_blocks('install.rst')
                 if b.language == 'console' for c in commands(b)}
        for block in re.findall(r'```sh\n(.*?)```', readme, re.S):
            for line in block.splitlines():
                self.assertIn(line, shown,
                              'README.md and install.rst disagree')

    def test_matching(self) -> None:
        self.assertIsNone(mismatch(['a  b', 'c ... e'], 'a b\nc d e\n'))
        self.assertIsNone(mismatch(['x', '...', 'y'], 'x\n1\n2\ny'))
        self.assertIsNone(mismatch(
            ['crcache: 2026-12-02T06:30:01Z b ready', 'z'],
            'crcache: 2027-01-01T00:00:00Z a ready\n'
            'crcache: 2027-01-01T00:00:00Z b ready\nz\n'))
        self.assertIsNone(mismatch(['z'],
                                   'crcache: 2027-01-01T00:00:00Z slow\nz'))
        self.assertIsNotNone(mismatch(['a'], 'b'))
        self.assertIsNotNone(mismatch(
            ['crcache: 2026-12-02T06:30:01Z c ready'],
            'crcache: 2027-01-01T00:00:00Z b ready'))
