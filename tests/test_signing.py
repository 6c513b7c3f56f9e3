"""Signing keys and MACs (gcache.signing), and signed envelopes (gcache._envelope), without Redis."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gcache import GCache, GCacheConfig
from gcache import _envelope as envelope
from gcache.errors import ConfigError
from gcache.signing import ENV_SIGNING_KEYS, MAC_SIZE, ReplayGuard, Signer, key_id, signing_keys_from

K1 = b"k1-0123456789abcdef"
K2 = b"k2-0123456789abcdef"
KEY = "{urn:gcache:user_id:1}#UC"
NONCE = b"NONCE--1"


def test_the_entry_mac_is_rfc_2104_hmac_sha256_over_label_key_and_envelope_truncated() -> None:
    signer = Signer([K1])
    head, payload = b"head-bytes", b"payload-bytes"
    name = KEY.encode()
    message = b"gcache entry v2\0" + len(name).to_bytes(4, "big") + name + head + payload

    expected = hmac.new(K1, message, hashlib.sha256).digest()[:MAC_SIZE]

    assert signer.entry_mac(KEY, head, payload) == expected


def test_a_key_longer_than_the_hash_block_is_hashed_first_as_rfc_2104_says() -> None:
    long_key = b"x" * 100
    signer = Signer([long_key])
    message = b"gcache bus v1\0" + b"fields"

    expected = hmac.new(long_key, message, hashlib.sha256).digest()[:MAC_SIZE]

    assert signer.message_ok(b"fields", signer.message_signature(b"fields"))
    assert not signer.message_ok(b"fields!", signer.message_signature(b"fields"))
    assert signer.message_signature(b"fields") == b"%b.%b" % (
        key_id(long_key).hex().encode(),
        expected.hex().encode(),
    )


def test_signed_envelope_verifies_and_any_changed_byte_or_other_key_fails() -> None:
    signer = Signer([K1])
    raw = envelope.encode(b"payload", envelope.SERIALIZER_PICKLE, 0, 123, NONCE, key=KEY, signer=signer)

    assert raw[29:33] == key_id(K1)
    assert envelope.signed_by(signer, KEY, raw)
    assert envelope.decode(raw).payload == b"payload"
    assert not envelope.signed_by(signer, KEY + "x", raw)  # copied to another key
    for i in range(len(raw)):
        changed = bytearray(raw)
        changed[i] ^= 0x01
        assert not envelope.signed_by(signer, KEY, bytes(changed)), f"byte {i} is not covered"
    assert not envelope.signed_by(signer, KEY, raw + b"x")  # extended
    assert not envelope.signed_by(signer, KEY, raw[:-1])  # cut short


def test_an_unsigned_envelope_never_verifies() -> None:
    raw = envelope.encode(b"payload", envelope.SERIALIZER_PICKLE, 0, 123, NONCE)

    assert raw[29:49] == b"\0" * 20
    assert not envelope.signed_by(Signer([K1]), KEY, raw)


def test_rotation_every_key_verifies_and_the_first_signs() -> None:
    old, both, new = Signer([K1]), Signer([K2, K1]), Signer([K2])
    by_old = envelope.encode(b"v", 0, 0, 1, key=KEY, signer=old)
    by_both = envelope.encode(b"v", 0, 0, 1, key=KEY, signer=both)

    assert envelope.signed_by(both, KEY, by_old)
    assert envelope.signed_by(new, KEY, by_both)  # signed with K2, the first
    assert not envelope.signed_by(old, KEY, by_both)  # K1 alone does not know K2
    assert not envelope.signed_by(new, KEY, by_old)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=64), st.text(max_size=30))
def test_no_other_entry_or_key_shares_a_mac(payload: bytes, other: bytes, suffix: str) -> None:
    signer = Signer([K1])
    raw = envelope.encode(payload, 0, 0, 1, key=KEY, signer=signer)
    forged = envelope.encode(other, 0, 0, 1, key=KEY + suffix, signer=signer)
    if (other, suffix) != (payload, ""):
        assert raw[33:49] != forged[33:49]


def test_signing_keys_come_from_the_environment_when_the_config_gives_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_SIGNING_KEYS, f" {K1.decode()} ,, {K2.decode()},")

    assert signing_keys_from(None) == [K1, K2]
    assert signing_keys_from([K2]) == [K2]  # the config wins
    assert signing_keys_from([]) == []  # even when it says no keys


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["short"], "key 0 has 5 bytes, 16 at least"),
        ([K1, 42], "key 1 must be str or bytes, got int"),
        ([K1, K1], "key 1 is given twice"),
        ("one-string-of-a-key-1234", "must be a list of keys, not one str"),
    ],
)
def test_bad_signing_keys_are_a_config_error_naming_the_problem(keys: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GCacheConfig(signing_keys=keys)  # type: ignore[arg-type]


def test_a_bad_key_in_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SIGNING_KEYS, "tiny")

    with pytest.raises(ConfigError, match=f"environment variable {ENV_SIGNING_KEYS}: key 0 has 4 bytes"):
        GCache(GCacheConfig())


def test_require_signing_refuses_to_start_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SIGNING_KEYS, raising=False)

    with pytest.raises(ConfigError, match="require_signing is set but there are no signing keys"):
        GCache(GCacheConfig(require_signing=True))
    GCache(GCacheConfig(require_signing=True, signing_keys=[K1])).close()
    monkeypatch.setenv(ENV_SIGNING_KEYS, K1.decode())
    GCache(GCacheConfig(require_signing=True)).close()


def test_signing_keys_never_show_in_the_config_repr() -> None:
    assert K1.decode() not in repr(GCacheConfig(signing_keys=[K1.decode()]))


def test_replay_guard_refuses_a_repeat_and_what_is_outside_the_window() -> None:
    guard = ReplayGuard(window_sec=10)
    now = 1_000_000_000_000

    assert guard.check(b"sig-1", now, now) is None
    assert guard.check(b"sig-1", now, now + 1) == "replayed"
    assert guard.check(b"sig-2", now - 11_000_000, now) == "stale"
    assert guard.check(b"sig-3", now + 11_000_000, now) == "stale"  # a clock far ahead
    assert guard.check(b"sig-4", now - 9_000_000, now) is None


def test_replay_guard_forgets_what_the_window_no_longer_admits_and_stays_bounded() -> None:
    guard = ReplayGuard(window_sec=10, max_remembered=100)
    now = 1_000_000_000_000
    for i in range(1_000):
        assert guard.check(b"sig-%d" % i, now, now) is None
    assert len(guard._seen) <= 100

    guard.check(b"late", now + 20_000_000, now + 20_000_000)
    assert list(guard._seen) == [b"late"]  # the rest left the window


def test_two_keys_with_one_key_id_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 4-byte id: two random keys sharing one is a 1 in 4 billion event, told if it happens.
    monkeypatch.setattr("gcache.signing.key_id", lambda key: b"same")

    with pytest.raises(ConfigError, match="same key id"):
        Signer([K1, K2])


def test_key_ids_are_four_bytes_that_differ_between_keys() -> None:
    ids = {key_id(os.urandom(32)) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 4 for i in ids)
