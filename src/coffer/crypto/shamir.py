"""Shamir key shares as SLIP-39 mnemonics (via Trezor's ``shamir-mnemonic``).

All shares form a single SLIP-39 group, encrypted with an empty passphrase.
SLIP-39 forbids "1-of-N" member sharing (it would just be N copies of the
secret), so ``threshold == 1`` is only accepted together with ``shares == 1``.
"""

from __future__ import annotations

from shamir_mnemonic import MnemonicError, Share
from shamir_mnemonic.shamir import ShareGroup, generate_mnemonics, recover_ems

__all__ = ["MAX_SHARES", "InvalidShares", "combine", "split"]

MAX_SHARES = 16


class InvalidShares(ValueError):
    """The given shares cannot be combined (too few, mismatched or malformed)."""


def split(secret: bytes, shares: int, threshold: int) -> list[str]:
    """Split ``secret`` into ``shares`` mnemonics, any ``threshold`` of which recover it."""
    if not 1 <= threshold <= shares <= MAX_SHARES:
        raise ValueError(f"need 1 <= threshold <= shares <= {MAX_SHARES}")
    if threshold == 1 and shares > 1:
        raise ValueError("SLIP-39 does not allow threshold 1 with more than one share; use 1-of-1")
    if len(secret) < 16 or len(secret) % 2:
        raise ValueError("secret must be at least 16 bytes and an even number of bytes")
    groups = generate_mnemonics(1, [(threshold, shares)], secret)
    return [str(mnemonic) for mnemonic in groups[0]]


def combine(shares: list[str]) -> bytes:
    """Recover the secret from at least ``threshold`` distinct shares of one split."""
    if not shares:
        raise InvalidShares("no shares given")
    parsed = [_parse(number, text) for number, text in enumerate(shares, start=1)]
    first = parsed[0]
    if any(share.group_parameters() != first.group_parameters() for share in parsed):
        raise InvalidShares("shares do not all belong to the same secret")
    if first.group_count != 1 or first.group_threshold != 1:
        raise InvalidShares("multi-group SLIP-39 shares are not supported")
    by_index: dict[int, Share] = {}
    for share in parsed:
        if by_index.setdefault(share.index, share) != share:
            raise InvalidShares("conflicting shares with the same index")
    threshold: int = first.member_threshold
    if len(by_index) < threshold:
        raise InvalidShares(f"need {threshold} distinct shares, got {len(by_index)}")
    group = ShareGroup()
    for share in list(by_index.values())[:threshold]:
        group.add(share)
    try:
        secret: bytes = recover_ems({first.group_index: group}).decrypt(b"")
    except (MnemonicError, ValueError):
        raise InvalidShares("shares are inconsistent (checksum of the secret failed)") from None
    return secret


def _parse(number: int, text: str) -> Share:
    try:
        share: Share = Share.from_mnemonic(text)
    except (MnemonicError, ValueError, TypeError, AttributeError):
        raise InvalidShares(f"share #{number} is not a valid SLIP-39 mnemonic") from None
    return share
