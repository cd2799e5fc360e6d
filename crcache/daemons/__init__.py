"""crcache's background processes, apart from the command line.

* :mod:`~crcache.daemons.client`: what every ``crcache`` invocation runs
  first (builtin modules only): hand the command to the agent;
* :mod:`~crcache.daemons.agent`: the warm process that forks a worker
  per command;
* :mod:`~crcache.daemons.warmup`: what the agent loads once, and how it
  notices a plugin changed since;
* :mod:`~crcache.daemons.worker`: a forked worker taking on the client's
  process and running its command;
* :mod:`~crcache.daemons.ipc`: what the agent and the ssh connection
  holders share: private runtime directories, safe sockets, starting
  and claiming (builtin modules only);
* :mod:`~crcache.daemons.messages`: the framed messages they exchange,
  descriptors included (builtin modules only).

Nothing is imported here: the client's start-up is the CLI's latency.
"""
