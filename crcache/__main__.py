"""``python -m crcache``: the ``crcache`` command, for crcache's own use.

crcache starts itself this way where the console script's path is not
known (a garbage collection pass in the background of an acquire).
"""

from crcache import shell

shell.main()
