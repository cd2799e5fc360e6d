"""The ``ssh`` source type: existing machines reached over ssh.

* :mod:`~crcache.sources.ssh.source`: the driver (``type = ssh``);
* :mod:`~crcache.sources.ssh.settings`: what decides how a host is
  reached and trusted;
* :mod:`~crcache.sources.ssh.target`: where and as whom to connect,
  once ``~/.ssh/config`` applies;
* :mod:`~crcache.sources.ssh.hostkeys`: trusting the host's key, against
  ``known_hosts``;
* :mod:`~crcache.sources.ssh.connection`: one verified paramiko
  connection;
* :mod:`~crcache.sources.ssh.command`: a command on one of its
  channels, signalled and pumped;
* :mod:`~crcache.sources.ssh.holder`: the process that keeps a
  connection open between commands, and its client.

Nothing of the type is imported here: the holder's client must stay
light. What is done here, before any module of the type imports
paramiko, is to defer ``invoke`` (see :mod:`crcache.lazyimports`).
"""

from crcache import lazyimports

lazyimports.defer(*lazyimports.UNUSED_BY_PARAMIKO)
