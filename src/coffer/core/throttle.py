"""Request limits of the data plane, as Key Vault's service limits: counted per vault in a sliding 10-second window
(one bucket for every transaction, a smaller one shared by secret sets and key and certificate imports), plus a
limit per principal per vault so that one caller cannot use up a vault's whole budget. Over a limit the request is
refused with 429 `Throttled` and a Retry-After (the Azure SDKs wait and retry). Refused requests are not counted.

Counters live in each process: with several workers or nodes a vault's effective limit is the sum of theirs."""

from __future__ import annotations

from dataclasses import dataclass

from coffer.errors import Throttled
from coffer.identity.throttle import SlidingWindow

# Key Vault's "CREATE secret + IMPORT certificate + IMPORT key" bucket
CREATES = frozenset({"SecretSet", "KeyImport", "CertificateImport"})
WINDOW_SECONDS = 10.0


@dataclass(frozen=True)
class Limits:
    """Transactions per 10 seconds; 0 = no limit."""

    vault: int = 4000
    vault_creates: int = 300
    principal: int = 2000


class RequestThrottle:
    def __init__(self, limits: Limits) -> None:
        def window(limit: int) -> SlidingWindow | None:
            return SlidingWindow(limit, WINDOW_SECONDS) if limit > 0 else None

        self._vault = window(limits.vault)
        self._creates = window(limits.vault_creates)
        self._principal = window(limits.principal)

    def admit(self, vault: str, operation: str, principal: str) -> None:
        """Count the request, or raise Throttled if one of its buckets is full."""
        buckets = [(self._vault, vault), (self._principal, f"{vault}/{principal}")]
        if operation in CREATES:
            buckets.append((self._creates, vault))
        counted = [(w, key) for w, key in buckets if w is not None]
        waits = [wait for w, key in counted if (wait := w.retry_after(key)) is not None]
        if waits:
            raise Throttled(retry_after=max(waits))
        for w, key in counted:
            w.add(key)
