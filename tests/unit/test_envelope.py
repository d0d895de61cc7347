import pytest

from coffer.crypto import DecryptionFailed, envelope

PARTS = ("vault1", "secret", "db-password", "0123abcd", "value")


def sealed_value(term: int = 7) -> tuple[bytes, bytes, bytes]:
    key = envelope.new_key()
    ad = envelope.aad(*PARTS)
    return key, ad, envelope.seal(key, b"hunter2", ad, term=term)


def test_roundtrip() -> None:
    key, ad, sealed = sealed_value()
    assert envelope.open(key, sealed, ad) == b"hunter2"
    assert envelope.unseal(key, sealed, ad) == b"hunter2"
    assert envelope.unseal is envelope.open


def test_layout_and_randomised_nonce() -> None:
    key, ad, sealed = sealed_value(term=0x01020304)
    assert sealed[:5] == b"\x01\x01\x02\x03\x04"
    assert len(sealed) == 5 + 12 + len(b"hunter2") + 16
    assert envelope.seal(key, b"hunter2", ad) != envelope.seal(key, b"hunter2", ad)


def test_new_key() -> None:
    assert len(envelope.new_key()) == envelope.KEY_BYTES == 32
    assert envelope.new_key() != envelope.new_key()


def test_aad_format() -> None:
    assert envelope.aad("a", "b") == b"coffer\x00v1\x00a\x00b"
    assert envelope.aad() == b"coffer\x00v1\x00"
    assert envelope.aad("é") == b"coffer\x00v1\x00\xc3\xa9"
    with pytest.raises(ValueError):
        envelope.aad("a\x00b")


def test_tampering_any_byte_fails() -> None:
    key, ad, sealed = sealed_value()
    for index in range(len(sealed)):  # header, nonce, ciphertext and tag
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(DecryptionFailed):
            envelope.open(key, bytes(tampered), ad)


@pytest.mark.parametrize("position", range(len(PARTS)))
def test_wrong_aad_part_fails(position: int) -> None:
    key, _, sealed = sealed_value()
    parts = list(PARTS)
    parts[position] += "x"
    with pytest.raises(DecryptionFailed):
        envelope.open(key, sealed, envelope.aad(*parts))


def test_aad_parts_cannot_be_shifted() -> None:
    key = envelope.new_key()
    sealed = envelope.seal(key, b"x", envelope.aad("ab", "c"))
    with pytest.raises(DecryptionFailed):
        envelope.open(key, sealed, envelope.aad("a", "bc"))


def test_wrong_key_fails() -> None:
    _, ad, sealed = sealed_value()
    with pytest.raises(DecryptionFailed):
        envelope.open(envelope.new_key(), sealed, ad)
    with pytest.raises(DecryptionFailed):
        envelope.open(b"short", sealed, ad)


def test_unknown_version_fails() -> None:
    key, ad, sealed = sealed_value()
    for version in (0x00, 0x02, 0xFF):
        with pytest.raises(DecryptionFailed):
            envelope.open(key, bytes([version]) + sealed[1:], ad)


def test_truncated_fails() -> None:
    key, ad, sealed = sealed_value()
    for length in range(len(sealed)):
        with pytest.raises(DecryptionFailed):
            envelope.open(key, sealed[:length], ad)


def test_error_message_does_not_leak() -> None:
    key, ad, sealed = sealed_value()
    with pytest.raises(DecryptionFailed) as info:
        envelope.open(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), ad)
    text = str(info.value) + repr(info.value)
    assert "hunter2" not in text and key.hex() not in text and repr(key) not in text


def test_empty_plaintext() -> None:
    key = envelope.new_key()
    ad = envelope.aad("v")
    sealed = envelope.seal(key, b"", ad)
    assert len(sealed) == 5 + 12 + 16
    assert envelope.open(key, sealed, ad) == b""


def test_term_of() -> None:
    key = envelope.new_key()
    for term in (0, 1, 42, 2**32 - 1):
        assert envelope.term_of(envelope.seal(key, b"x", b"", term=term)) == term
    assert envelope.term_of(envelope.seal(key, b"x", b"")) == 0
    with pytest.raises(DecryptionFailed):
        envelope.term_of(b"\x01\x00")
    for term in (-1, 2**32):
        with pytest.raises(ValueError):
            envelope.seal(key, b"x", b"", term=term)
