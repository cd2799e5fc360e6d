"""Moving commands and bytes, whatever the backend.

What source drivers share, typed against the small
:class:`~crcache.transport.runner.Runner` protocol (anything that runs a
command line with descriptors): building the shell command line
(:mod:`cmdline`), running local processes with shell-like signals
(:mod:`process`), reaching a remote command's process group
(:mod:`remotegroup`), copying over ``run`` with tar (:mod:`tarcopy`),
extracting untrusted archives (:mod:`untar`, creating their members
with :mod:`tarmembers` through the no-follow walk of :mod:`nofollow`),
local copies (:mod:`localcopy`) and descriptor plumbing (:mod:`fdio`).
Nothing here knows the state store or a particular backend.
"""
