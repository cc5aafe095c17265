"""Which name a pod last resolved to an IP: used to name HTTP peers outside the cluster.

Fed with DNS responses as they are decoded; asked, for an HTTP flow to an address with
no pod behind it, for the name the client pod most recently resolved to that address,
while the answer's TTL (plus a grace period) has not run out. Bounded: the least
recently used entries go first. Flows arrive roughly in time order, so flow time is
the clock.
"""

from __future__ import annotations

from collections import OrderedDict

# An answer's TTL is capped here: a day-long TTL says little about what a name meant.
MAX_TTL_NS = 3600 * 1_000_000_000


class DNSCache:
    def __init__(self, max_entries: int = 100_000, grace_s: float = 60.0):
        self.max_entries = max_entries
        self.grace_ns = int(grace_s * 1_000_000_000)
        self._entries: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()

    def learn(self, client: str, ips, name: str, ttl_s: int, time_ns: int) -> None:
        expires = time_ns + min(ttl_s * 1_000_000_000, MAX_TTL_NS) + self.grace_ns
        for ip in ips:
            key = (client, ip)
            self._entries[key] = (name, expires)
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def name_for(self, client: str, ip: str, time_ns: int) -> str:
        entry = self._entries.get((client, ip))
        if entry is None or entry[1] < time_ns:
            return ""
        return entry[0]
