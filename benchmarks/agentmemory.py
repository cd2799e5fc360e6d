"""How large the crcache agent and its workers grew, for the benchmarks.

An agent says, as it exits, its own maximum resident set size and the
largest of its workers' (crcache.daemons.warmup.report_memory, in the
log beside its socket). :func:`stop` ends the agents serving a runtime
directory and reads that; :func:`describe` makes the benchmark's line.
Target (issue 13): the agent under 60 MiB.
"""

import glob
import os
import re
import signal
import sys
import time

TARGET_MIB = 60
_LINE = re.compile(r'crcache agent: max RSS (\d+) KiB, largest worker '
                   r'(\d+) KiB')


def _agents(runtime_dir):
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/cmdline', 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(
                    errors='replace')
        except OSError:
            continue
        if 'crcache.daemons.agent' in cmdline and runtime_dir in cmdline:
            found.append(int(entry))
    return found


def stop(runtime_dir, timeout=10.0):
    """End the agents of ``runtime_dir`` (``$XDG_RUNTIME_DIR``); return
    (agent KiB, largest worker KiB), the largest over them, or None."""
    pids = _agents(runtime_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
            os.path.exists(f'/proc/{pid}') for pid in pids):
        time.sleep(0.05)
    agent = worker = None
    logs = glob.glob(os.path.join(runtime_dir, 'crcache', '*.log'))
    if not pids or not logs:
        print(f'(agentmemory: {len(pids)} agent processes, {len(logs)} '
              f'logs under {runtime_dir})', file=sys.stderr)
    texts = {}
    for log in logs:
        with open(log, errors='replace') as f:
            texts[log] = f.read()
        for match in _LINE.finditer(texts[log]):
            agent = max(agent or 0, int(match.group(1)))
            worker = max(worker or 0, int(match.group(2)))
    if agent is None:
        # Say why: the end of each log (an agent that failed says so).
        for log, text in texts.items():
            tail = '\n  '.join(text.strip().splitlines()[-8:])
            print(f'(agentmemory: {log} ends with:\n  {tail})',
                  file=sys.stderr)
    return None if agent is None else (agent, worker)


def describe(found):
    """The benchmark's memory line for what :func:`stop` returned."""
    if found is None:
        return 'memory: no agent reported its size'
    agent, worker = found
    verdict = 'met' if agent < TARGET_MIB * 1024 else 'NOT met'
    return (f'memory (max RSS): agent {agent / 1024:.1f} MiB (target < '
            f'{TARGET_MIB} MiB: {verdict}), largest worker '
            f'{worker / 1024:.1f} MiB')
