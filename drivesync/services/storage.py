"""Where file bytes live: a local folder (a shared volume in production).

Bytes are written under generated names, never the user's, so no name can escape the folder.
Incoming uploads stream straight into the folder while their hashes are computed, then are
renamed into place: one write, constant memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..graph.quickxor import QuickXorHash

logger = logging.getLogger(__name__)

_INCOMING = ".incoming"


class IncomingFile:
    """A writable file in the storage folder that hashes and counts what is written to it."""

    def __init__(self, path: Path, before_write: Callable[[int], None] | None = None) -> None:
        self.path = path
        # Told each chunk's length before it is written; may raise to stop the stream (quota).
        self.before_write = before_write
        # Private to the service's user whatever the umask (probe L9: uploads were 0644).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._fh: BinaryIO = os.fdopen(fd, "wb")
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._qxh = QuickXorHash()
        self.closed = False

    def write(self, data: bytes) -> int:
        """Write ``data`` and fold it into the hashes."""
        if self.before_write is not None:
            self.before_write(len(data))
        self._fh.write(data)
        self._sha256.update(data)
        self._qxh.update(data)
        self.size += len(data)
        return len(data)

    # werkzeug's form parser seeks back to the start once a part is complete.
    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the file position (werkzeug rewinds parts after parsing)."""
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        """Return the file position."""
        return self._fh.tell()

    def read(self, size: int = -1) -> bytes:
        """Read from the file (only used by callers that inspect the part)."""
        return self._fh.read(size)

    def flush(self) -> None:
        """Flush buffered bytes to the operating system."""
        self._fh.flush()

    def close(self) -> None:
        """Close the underlying file."""
        if not self.closed:
            self._fh.close()
            self.closed = True

    @property
    def sha256(self) -> str:
        """Return the SHA-256 of everything written, as hex."""
        return self._sha256.hexdigest()

    @property
    def quick_xor_hash(self) -> str:
        """Return the quickXorHash of everything written, as OneDrive shows it."""
        return self._qxh.b64digest()


class LocalStorage:
    """File bytes in one local folder, addressed by generated names."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _ensure(self) -> None:
        if not (self.root / _INCOMING).is_dir():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.root / _INCOMING).mkdir(mode=0o700, exist_ok=True)

    def new_incoming(self, before_write: Callable[[int], None] | None = None) -> IncomingFile:
        """Return a new ``IncomingFile`` in the storage folder (same filesystem: cheap rename)."""
        self._ensure()
        return IncomingFile(self.root / _INCOMING / secrets.token_hex(16), before_write)

    def commit(self, incoming: IncomingFile) -> str:
        """Move a finished incoming file to its permanent generated name; return that name."""
        incoming.flush()
        os.fsync(incoming._fh.fileno())
        incoming.close()
        name = secrets.token_hex(16)
        os.replace(incoming.path, self.path(name))
        return name

    def discard(self, incoming: IncomingFile) -> None:
        """Remove an incoming file that will not be kept."""
        incoming.close()
        incoming.path.unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        """Return the absolute path of a stored name, refusing anything but a generated name."""
        if len(name) != 32 or not all(c in "0123456789abcdef" for c in name):
            raise ValueError("not a stored file name")
        return self.root / name

    def open(self, name: str) -> BinaryIO:
        """Open a stored file for reading."""
        return open(self.path(name), "rb")  # noqa: SIM115 - the caller closes it

    def delete(self, name: str) -> None:
        """Delete a stored file; a missing file is not an error."""
        try:
            self.path(name).unlink(missing_ok=True)
        except ValueError:
            logger.warning("refused to delete a non-generated storage name")
