"""HTTPS for the emulator: a throw-away CA and a server certificate, made with ``trustme``.

Microsoft only speaks HTTPS, so the tests talk to the emulator the same way. Nothing here is
meant to be trusted outside one test session or one development run: the CA's key lives in
memory and the files go to a temporary folder that is deleted when the server stops.

``trustme`` is a test/development dependency (the ``test`` extra); it is imported only when TLS
is asked for, so plain-HTTP use of the emulator (``./bin/run``) does not need it.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trustme

# The names every local client uses; the host the server binds to is added when it differs.
DEFAULT_IDENTITIES = ("127.0.0.1", "::1", "localhost")
_WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 - compared against, never bound here


def new_ca() -> trustme.CA:
    """Return a fresh throw-away certificate authority (needs ``trustme``)."""
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the emulator's --tls needs trustme: pip install -e '.[test]' (or pip install trustme)"
        ) from exc
    return trustme.CA(organization_name="drivesync OneDrive emulator (throw-away test CA)")


def write_bundle(ca_pem: bytes, path: str) -> str:
    """Write certifi's roots followed by ``ca_pem`` to ``path``; return ``path``.

    ``requests`` prefers ``REQUESTS_CA_BUNDLE`` over ``Session.verify``, and one bundle file is
    the only way to trust a test CA *and* the real roots at the same time.
    """
    import certifi

    with open(certifi.where(), "rb") as src, open(path, "wb") as out:
        roots = src.read()
        out.write(roots if roots.endswith(b"\n") else roots + b"\n")
        out.write(ca_pem)
    return path


@dataclass
class ServerTls:
    """The server side of the emulator's HTTPS: its SSL context and the files clients trust."""

    context: ssl.SSLContext
    directory: str
    ca_file: str  # the CA certificate alone (PEM)
    bundle_file: str  # certifi's roots + the CA: point REQUESTS_CA_BUNDLE / SSL_CERT_FILE here
    identities: tuple[str, ...] = field(default=DEFAULT_IDENTITIES)

    def cleanup(self) -> None:
        """Delete the temporary folder with the certificate files."""
        shutil.rmtree(self.directory, ignore_errors=True)


def server_tls(host: str, ca: trustme.CA | None = None) -> ServerTls:
    """Issue a certificate for the loopback names (and ``host``) signed by ``ca`` (or a new CA).

    Writes ``ca.pem``, ``bundle.pem`` and ``server.pem`` (key and chain) to a new temporary
    folder. The context accepts TLS 1.2 and later, as Microsoft's endpoints do.
    """
    ca = ca or new_ca()
    identities = list(DEFAULT_IDENTITIES)
    if host not in _WILDCARDS and host not in identities:
        identities.append(host)
    cert = ca.issue_cert(*identities, common_name="localhost")
    directory = tempfile.mkdtemp(prefix="onedrive-emulator-tls-")
    ca_file = os.path.join(directory, "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    cert.private_key_and_cert_chain_pem.write_to_path(os.path.join(directory, "server.pem"))
    bundle = write_bundle(ca.cert_pem.bytes(), os.path.join(directory, "bundle.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert.configure_cert(context)
    return ServerTls(context, directory, ca_file, bundle, tuple(identities))
