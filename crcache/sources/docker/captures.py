"""Snapshots for the docker source: a capture is a committed image.

A provisioned container is committed (paused for the moment it takes)
to a local image, ``crcache-capture:<store id>-<source>-<fingerprint>``,
labelled with the state store's id, the source and the fingerprint
crcache gave it, so that every image crcache made can be found by its
labels even when the process that committed it was killed before it
could record the id. New containers of the source are then created from
that image instead of ``docker_image``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from crcache import exceptions

REPOSITORY = 'crcache-capture'
LABEL_STORE = 'crcache.capture.store'
LABEL_SOURCE = 'crcache.capture.source'
LABEL_FINGERPRINT = 'crcache.capture.fingerprint'


def basis(source: Any) -> dict[str, str]:
    """The id ``docker_image`` names now (pulled first if need be).

    One plain API call when the image is there (the SDK's session costs
    milliseconds more, on every acquire of the source).
    """
    image = source.conf.docker_image
    what = f'looking up image {image}'
    info = source.request(what, 'GET', f'/images/{quote(image)}/json')
    if info is None:
        source._ensure_image()  # pulls it, or says why it cannot
        info = source.request(what, 'GET', f'/images/{quote(image)}/json')
    if not info or not info.get('Id'):
        raise exceptions.SourceError(
            source.name, f'{what}: the engine returned no image id')
    return {'image': info['Id']}


def capture(source: Any, ref: dict, fingerprint: str) -> str:
    """Commit the container ``ref`` to a labelled image; its id."""
    labels = {LABEL_STORE: source.owner, LABEL_SOURCE: source.name,
              LABEL_FINGERPRINT: fingerprint}
    tag = f'{source.owner}-{source.name}-{fingerprint}'[:128]
    query = urlencode({'container': ref['id'], 'repo': REPOSITORY,
                       'tag': tag, 'pause': '1',
                       'comment': f'crcache: source {source.name}, '
                                  'provisioned'})
    committed = source.request(
        f"capturing container {ref.get('name')}", 'POST',
        f'/commit?{query}', {'Labels': labels})
    if not committed or not committed.get('Id'):
        raise exceptions.SourceError(
            source.name, f"capturing container {ref.get('name')}: the "
            'engine returned no image id')
    return committed['Id']


def listed(source: Any, store_id: str) -> dict[str, str]:
    """This store's captures of the source: image id to fingerprint."""
    images = source.call(
        'listing captured images', source.api.images, all=True,
        filters={'label': [f'{LABEL_STORE}={store_id}',
                           f'{LABEL_SOURCE}={source.name}']})
    return {image['Id']: (image.get('Labels') or {}).get(
        LABEL_FINGERPRINT, '') for image in images}


def drop(source: Any, capture_id: str) -> None:
    """Remove a captured image; gone already is success."""
    import docker.errors
    try:
        source.call(f'removing captured image {short(capture_id)}',
                    source.api.remove_image, capture_id, force=False)
    except docker.errors.NotFound:
        pass
    except exceptions.SourceError as err:
        if 'being used by' in str(err):  # the engine's 409 conflict
            raise exceptions.CaptureInUse(
                source.name, f'captured image {short(capture_id)} is still '
                'used by a container')
        raise


def exists(source: Any, capture_id: str) -> bool:
    """Whether the captured image is still on the engine."""
    import docker.errors
    try:
        source.call(f'looking up captured image {short(capture_id)}',
                    source.api.inspect_image, capture_id)
    except docker.errors.NotFound:
        return False
    return True


def missing(source: Any, capture_id: str) -> exceptions.CaptureGone:
    """The error for a capture removed behind crcache's back."""
    return exceptions.CaptureGone(
        source.name, f'captured image {short(capture_id)} is no longer on '
        f'the engine at {source.docker_host}')


def short(capture_id: str) -> str:
    """An image id as docker shows it (12 hex digits)."""
    return capture_id.split(':', 1)[-1][:12]
