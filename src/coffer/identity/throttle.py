"""Rate limits on failed client authentications at the token endpoints (no online brute force).

Failures are counted in a sliding window per client (tenant + client_id, or identity endpoint) and per
source address (IPv6 by /64, since one host usually owns a whole /64). Once a key reaches its limit,
requests for it are answered 429 + Retry-After *before* any credential is checked, until the oldest
failure leaves the window. A success clears the client's own count, never the source address's.
Requests refused by the throttle are not counted, so a lockout ends on schedule. Memory is bounded:
at most `limit` timestamps per key and `max_keys` keys (least recently failed evicted first).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque


class SlidingWindow:
    """Failure timestamps per key within `window_seconds`; thread-safe and bounded."""

    def __init__(self, limit: int, window_seconds: float, max_keys: int = 50_000) -> None:
        if limit < 1 or window_seconds <= 0 or max_keys < 1:
            raise ValueError("limit, window and max_keys must be positive")
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, key: str, now: float | None = None) -> int | None:
        """Whole seconds until `key` may try again, or None if it may try now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.get(key)
            if times is None or len(times) < self.limit:
                return None
            wait = times[0] + self.window_seconds - now
            if wait <= 0:
                return None
            return max(1, math.ceil(wait))

    def add(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.pop(key, None)
            if times is None:
                times = deque(maxlen=self.limit)
            while times and times[0] <= now - self.window_seconds:
                times.popleft()
            times.append(now)
            self._failures[key] = times  # ordered by last failure: the oldest first
            self._evict(now)

    def _evict(self, now: float) -> None:
        """Drop keys whose last failure left the window, then the least recent beyond max_keys."""
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if oldest[-1] > now - self.window_seconds and len(self._failures) <= self.max_keys:
                return
            self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)


def source_key(address: str) -> str:
    """The unit a source address is counted in: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class AuthThrottle:
    """Failed authentications per client and per source address. The per-source limit is higher than the
    per-client one by default: many clients can share one address (NAT, a reverse proxy, loopback)."""

    def __init__(
        self,
        client_limit: int = 10,
        source_limit: int = 30,
        window_seconds: float = 60.0,
        max_keys: int = 50_000,
    ) -> None:
        self.clients = SlidingWindow(client_limit, window_seconds, max_keys)
        self.sources = SlidingWindow(source_limit, window_seconds, max_keys)

    def retry_after(self, client: str | None, source: str) -> int | None:
        """Seconds to wait if the client or the source address is locked out, else None."""
        waits = [self.sources.retry_after(source_key(source))]
        if client:
            waits.append(self.clients.retry_after(client))
        found = [w for w in waits if w is not None]
        return max(found) if found else None

    def failed(self, client: str | None, source: str) -> None:
        self.sources.add(source_key(source))
        if client:
            self.clients.add(client)

    def succeeded(self, client: str | None) -> None:
        if client:
            self.clients.clear(client)


__all__ = ["AuthThrottle", "SlidingWindow", "source_key"]
