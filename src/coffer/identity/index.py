"""In-memory index of live principals and credentials, so a deleted principal or a revoked credential
stops working at once, without a storage round trip per request. Rebuilt after every identity change."""

from __future__ import annotations

import threading

from coffer.identity.tokens import Caller
from coffer.storage import Transaction


class IdentityIndex:
    def __init__(self) -> None:
        self._principals: frozenset[str] = frozenset()
        self._credentials: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def reload(self, tx: Transaction) -> None:
        principals = frozenset(p.object_id for p in tx.principal_list())
        credentials = frozenset(c.id for c in tx.credential_all())
        with self._lock:
            self._principals, self._credentials = principals, credentials

    def problem(self, caller: Caller) -> str | None:
        """Why the caller's token no longer stands, or None. External callers are vouched for by their issuer,
        but may not take the object id of one of Coffer's principals (and so its role assignments)."""
        if caller.kind == "external":
            return "external token names a Coffer principal" if caller.object_id in self._principals else None
        if caller.object_id not in self._principals:
            return "principal deleted"
        if caller.credential_id is not None and caller.credential_id not in self._credentials:
            return "credential revoked"
        return None
