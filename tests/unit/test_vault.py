"""Token encryption at rest: AES-GCM bound to its row, several keys, rotation."""

from __future__ import annotations

import pytest

from drivesync.vault import Vault, VaultError, development_keys, new_key


def test_round_trip_and_no_clear_text():
    """A token decrypts to itself and its ciphertext does not contain it."""
    v = Vault(new_key())
    ct = v.encrypt("EwB4A8l6BAAUsecret", "oauth_tokens:1:a")
    assert "EwB4A8l6BAAUsecret" not in ct and ct.startswith("v1.")
    assert v.decrypt(ct, "oauth_tokens:1:a") == "EwB4A8l6BAAUsecret"
    assert v.encrypt("x", "c") != v.encrypt("x", "c")  # fresh nonce each time


def test_context_binds_ciphertext_to_its_row():
    """A ciphertext moved to another row or column does not decrypt."""
    v = Vault(new_key())
    ct = v.encrypt("token", "oauth_tokens:1:a")
    for other in ("oauth_tokens:2:a", "oauth_tokens:1:r"):
        with pytest.raises(VaultError):
            v.decrypt(ct, other)


def test_tampering_is_detected():
    """Any change to the ciphertext is refused."""
    v = Vault(new_key())
    ct = v.encrypt("token", "ctx")
    flipped = ct[:-3] + ("A" if ct[-3] != "A" else "B") + ct[-2:]
    for bad in (flipped, ct.replace("v1.", "v2."), "garbage", ct.split(".")[0] + ".x.y"):
        with pytest.raises(VaultError):
            v.decrypt(bad, "ctx")


def test_first_key_encrypts_all_decrypt_and_rotation():
    """With keys new,old: old ciphertexts decrypt, new ones use the first key; rotate moves."""
    old, new = new_key(), new_key()
    ct_old = Vault(old).encrypt("token", "ctx")
    both = Vault(f"{new},{old}")
    assert both.decrypt(ct_old, "ctx") == "token"
    assert both.needs_rotation(ct_old)
    rotated = both.rotate(ct_old, "ctx")
    assert not both.needs_rotation(rotated) and both.rotate(rotated, "ctx") == rotated
    assert Vault(new).decrypt(rotated, "ctx") == "token"
    with pytest.raises(VaultError, match="not configured"):
        Vault(new).decrypt(ct_old, "ctx")


@pytest.mark.parametrize("keys", ["", " , ", "not-base64!!", "c2hvcnQ="])
def test_bad_keys_are_refused(keys):
    """Missing, malformed or short keys are configuration errors."""
    with pytest.raises(VaultError):
        Vault(keys)


def test_error_messages_never_contain_the_token():
    """Failures say what went wrong without echoing secrets."""
    v = Vault(new_key())
    ct = v.encrypt("SUPERSECRETTOKEN", "ctx")
    with pytest.raises(VaultError) as info:
        Vault(new_key()).decrypt(ct, "ctx")
    assert "SUPERSECRETTOKEN" not in str(info.value) and ct not in str(info.value)


def test_development_key_is_created_once(tmp_path):
    """Development generates one private key file and then reuses it."""
    first = development_keys(tmp_path)
    assert development_keys(tmp_path) == first
    assert (tmp_path / "token_keys").stat().st_mode & 0o777 == 0o600
    Vault(first)
