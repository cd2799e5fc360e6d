"""Unit tests for crcache.cache.heartbeat: judging queued waiters."""

import os
import time

import testtools

from crcache import invocation
from crcache.cache import heartbeat


class TestWaiterGone(testtools.TestCase):

    def elsewhere(self, beat):
        return {'host': 'elsewhere.invalid', 'machine': 'm', 'pid': 1,
                'start': 1, 'heartbeat': beat}

    def test_another_hosts_waiter_goes_when_its_heartbeat_stops(self):
        now = time.time()
        self.assertFalse(heartbeat.waiter_gone(self.elsewhere(now - 2), 3,
                                               now))
        self.assertTrue(heartbeat.waiter_gone(self.elsewhere(now - 4), 3,
                                              now))

    def test_only_a_shared_store_judges_by_heartbeat(self):
        now = time.time()
        self.assertFalse(heartbeat.waiter_gone(self.elsewhere(now - 60),
                                               None, now))

    def test_a_waiter_without_heartbeat_is_never_judged_by_one(self):
        record = self.elsewhere(None)
        del record['heartbeat']
        self.assertFalse(heartbeat.waiter_gone(record, 3, time.time()))

    def test_this_hosts_waiter_is_judged_by_its_process(self):
        me = dict(invocation.identity(), heartbeat=0)
        self.assertFalse(heartbeat.waiter_gone(me, 3, time.time()))
        gone = dict(me, start=me['start'] + 1)
        self.assertTrue(heartbeat.waiter_gone(gone, None, time.time()))
        self.assertEqual(os.getpid(), me['pid'])
