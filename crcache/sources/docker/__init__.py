"""The ``docker`` source type: a container per instance.

* :mod:`~crcache.sources.docker.source`: the driver (``type = docker``);
* :mod:`~crcache.sources.docker.engine`: the Engine API calls on the hot
  path, and exec streams, without the SDK.
"""
