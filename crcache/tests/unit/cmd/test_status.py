"""Unit tests for crcache.cmd.status."""

import testtools

from crcache.cache import SourceStatus
from crcache.cmd import status


def _status(cached=0, in_use=0, maximum=0):
    return SourceStatus('s', 'local', maximum, 0, [], cached=cached,
                        in_use=in_use)


class TestQuery(testtools.TestCase):

    def test_sums(self):
        statuses = [_status(1, 2, 5), _status(0, 1, 2)]
        self.assertEqual('1', status.query(statuses, 'cached'))
        self.assertEqual('3', status.query(statuses, 'in-use'))
        self.assertEqual('7', status.query(statuses, 'max'))
        # 5 - 3 live + 1 cached, and 2 - 1 live.
        self.assertEqual('4', status.query(statuses, 'available'))

    def test_unbounded(self):
        statuses = [_status(1, 0, 0), _status(0, 0, 3)]
        self.assertEqual('0', status.query(statuses, 'max'))
        self.assertEqual('unlimited', status.query(statuses, 'available'))
