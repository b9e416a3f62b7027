"""Token encryption at rest: AES-256-GCM, bound to the row it belongs to, with key rotation.

``DRIVESYNC_TOKEN_KEYS`` is a comma-separated list of 32-byte keys (urlsafe base64). The first
key encrypts; every key decrypts. ``flask tokens rotate-key`` re-encrypts every token with the
first key, after which older keys can be removed from the list.

Each ciphertext is ``v1.<key id>.<base64(nonce || ciphertext+tag)>``. The associated data names
the table, row and column, so a ciphertext copied into another user's row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

logger = logging.getLogger(__name__)

VERSION = "v1"


class VaultError(Exception):
    """A key is malformed or a ciphertext cannot be decrypted (never says more than that)."""


def new_key() -> str:
    """Return a fresh random key in the format ``DRIVESYNC_TOKEN_KEYS`` expects."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def key_id(raw: bytes) -> str:
    """Return a short public identifier of a key (not enough to recover it)."""
    return hashlib.sha256(b"drivesync-key-id" + raw).hexdigest()[:12]


def _parse_key(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise VaultError("a token key is not valid base64") from None
    if len(raw) != 32:
        raise VaultError("each token key must be 32 bytes (use `flask tokens new-key`)")
    return raw


class Vault:
    """Encrypt and decrypt token strings with the configured keys."""

    def __init__(self, keys: str | list[str]) -> None:
        texts = [k for k in (keys.split(",") if isinstance(keys, str) else keys) if k.strip()]
        if not texts:
            raise VaultError("no token keys configured")
        self._keys: dict[str, AESGCM] = {}
        self._order: list[str] = []
        for text in texts:
            raw = _parse_key(text)
            kid = key_id(raw)
            if kid not in self._keys:
                self._keys[kid] = AESGCM(raw)
                self._order.append(kid)

    @property
    def current_key_id(self) -> str:
        """Return the id of the key that encrypts."""
        return self._order[0]

    def encrypt(self, plaintext: str, context: str) -> str:
        """Encrypt ``plaintext`` for the row and column named by ``context``."""
        kid = self.current_key_id
        nonce = os.urandom(12)
        sealed = self._keys[kid].encrypt(nonce, plaintext.encode("utf-8"), context.encode())
        return f"{VERSION}.{kid}.{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"

    def key_of(self, ciphertext: str) -> str:
        """Return the key id a ciphertext was made with."""
        parts = ciphertext.split(".")
        if len(parts) != 3 or parts[0] != VERSION:
            raise VaultError("not a vault ciphertext")
        return parts[1]

    def decrypt(self, ciphertext: str, context: str) -> str:
        """Decrypt a ciphertext made by ``encrypt`` with the same ``context``."""
        kid = self.key_of(ciphertext)
        aead = self._keys.get(kid)
        if aead is None:
            raise VaultError(f"token was encrypted with key {kid}, which is not configured")
        try:
            blob = base64.urlsafe_b64decode(ciphertext.split(".")[2])
            return aead.decrypt(blob[:12], blob[12:], context.encode()).decode("utf-8")
        except (InvalidTag, binascii.Error, ValueError):
            raise VaultError("token could not be decrypted (wrong key or tampered)") from None

    def needs_rotation(self, ciphertext: str) -> bool:
        """Return whether a ciphertext was made with a key other than the current one."""
        return self.key_of(ciphertext) != self.current_key_id

    def rotate(self, ciphertext: str, context: str) -> str:
        """Return ``ciphertext`` re-encrypted with the current key (unchanged if it already is)."""
        if not self.needs_rotation(ciphertext):
            return ciphertext
        return self.encrypt(self.decrypt(ciphertext, context), context)


def development_keys(instance_dir: str | os.PathLike[str]) -> str:
    """Return the development token key from the instance folder, creating it on first use."""
    path = Path(instance_dir) / "token_keys"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_key())
        logger.warning(
            "generated a development token key in %s; set DRIVESYNC_TOKEN_KEYS in production", path
        )
    return path.read_text().strip()
