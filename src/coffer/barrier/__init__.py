"""The single point of encryption between Coffer's logic and its untrusted storage."""

from coffer.barrier.seal import Barrier, SealStatus
from coffer.barrier.view import VaultView

__all__ = ["Barrier", "SealStatus", "VaultView"]
