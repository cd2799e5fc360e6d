"""Progress of slow work on stderr: a live line on a terminal, log lines
elsewhere.

Most crcache commands finish in milliseconds and say nothing. The few
things that can take a while (provisioning, filling a reserve, waiting
for room or for another process, copying large files) are reported
here, so that a user at a terminal sees what is going on and a CI log
shows what crcache was doing and what it waited for:

* :mod:`~crcache.progress.stderr`: on a terminal, one live status line;
  anywhere else, one plain line per event, stamped with the UTC time;
* :mod:`~crcache.progress.tasks`: what a piece of slow work is, and the
  quiet :class:`Reporter` (``-q``, and the library's default);
* :mod:`~crcache.progress.meters`: the bytes a copy has moved, counted
  on the calling thread's :class:`Meter`;
* :mod:`~crcache.progress.units`: sizes, durations and moments for
  people.

Their names are handed on here. Nothing starts a thread until a task is
started, and commands that do nothing slow never import this package.
"""

from crcache.progress.meters import IDLE, Meter, meter, metering
from crcache.progress.stderr import Progress, reporter
from crcache.progress.tasks import Reporter, Task
from crcache.progress.units import duration, size, stamp

__all__ = ['IDLE', 'Meter', 'Progress', 'Reporter', 'Task', 'duration',
           'meter', 'metering', 'reporter', 'size', 'stamp']
