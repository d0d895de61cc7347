import itertools
import os

import pytest

from coffer.crypto import InvalidShares, shamir


@pytest.fixture(scope="module")
def split_5_of_3() -> tuple[bytes, list[str]]:
    secret = os.urandom(32)
    return secret, shamir.split(secret, 5, 3)


def test_split_shape(split_5_of_3: tuple[bytes, list[str]]) -> None:
    _, shares = split_5_of_3
    assert len(shares) == 5 and len(set(shares)) == 5
    assert all(len(share.split()) == 33 for share in shares)  # 256-bit secret -> 33 words


def test_any_three_combine(split_5_of_3: tuple[bytes, list[str]]) -> None:
    secret, shares = split_5_of_3
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine(list(subset)) == secret


def test_more_than_threshold_and_duplicates(split_5_of_3: tuple[bytes, list[str]]) -> None:
    secret, shares = split_5_of_3
    assert shamir.combine(shares) == secret
    assert shamir.combine([shares[0], shares[0], shares[1], shares[2]]) == secret
    assert shamir.combine([shares[0].upper(), f"  {shares[1]} ", shares[2]]) == secret


def test_two_shares_are_not_enough(split_5_of_3: tuple[bytes, list[str]]) -> None:
    _, shares = split_5_of_3
    for subset in itertools.combinations(shares, 2):
        with pytest.raises(InvalidShares, match="need 3"):
            shamir.combine(list(subset))
    with pytest.raises(InvalidShares, match="need 3"):
        shamir.combine([shares[0], shares[1], shares[1]])


def test_empty_and_garbage(split_5_of_3: tuple[bytes, list[str]]) -> None:
    _, shares = split_5_of_3
    with pytest.raises(InvalidShares):
        shamir.combine([])
    for garbage in ("", "not a mnemonic at all", "academic " * 33):
        with pytest.raises(InvalidShares):
            shamir.combine([garbage, shares[0], shares[1]])


def test_corrupted_word_fails_without_echoing(split_5_of_3: tuple[bytes, list[str]]) -> None:
    _, shares = split_5_of_3
    words = shares[0].split()
    words[10] = "academic" if words[10] != "academic" else "acid"
    with pytest.raises(InvalidShares) as info:
        shamir.combine([" ".join(words), shares[1], shares[2]])
    assert not any(word in str(info.value) for word in shares[0].split()[:4])
    assert "#1" in str(info.value)


def test_mixed_secrets_fail(split_5_of_3: tuple[bytes, list[str]]) -> None:
    _, shares = split_5_of_3
    other = shamir.split(os.urandom(32), 5, 3)
    with pytest.raises(InvalidShares, match="same secret"):
        shamir.combine([shares[0], shares[1], other[2]])


def test_other_thresholds() -> None:
    secret = os.urandom(32)
    assert shamir.combine(shamir.split(secret, 1, 1)) == secret
    assert shamir.combine(shamir.split(secret, 2, 2)) == secret
    assert shamir.combine(shamir.split(secret, 16, 16)) == secret


@pytest.mark.parametrize(("shares", "threshold"), [(0, 0), (3, 0), (2, 3), (17, 3), (17, 17), (3, 1)])
def test_invalid_parameters(shares: int, threshold: int) -> None:
    with pytest.raises(ValueError):
        shamir.split(os.urandom(32), shares, threshold)


def test_invalid_secret_length() -> None:
    for length in (0, 8, 33):
        with pytest.raises(ValueError):
            shamir.split(os.urandom(length), 3, 2)
