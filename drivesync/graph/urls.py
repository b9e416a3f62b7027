"""Where the pre-authenticated URLs that Graph hands back may point (probe L5).

A download's ``Location`` and an upload session's ``uploadUrl`` come from Graph's answers, and
the credential-free session fetches them (it PUTs the user's bytes to one and saves the other's
body into the library). A malicious or misconfigured Graph endpoint could aim them at loopback or
internal services. ``UrlPolicy`` allows only: the Graph origin itself (the local emulator serves
its content there), or ``https`` to a host under one of the configured domains (by default the
Microsoft clouds' content domains) and never an IP literal. ``PolicyAdapter`` enforces it on
every request of a ``requests.Session``, each redirect hop included, and refuses any other
scheme (``file:``, ``gopher:``) the same way instead of letting ``InvalidSchema`` escape.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter

#: Content hosts of Microsoft's clouds, as seen in Graph's download and upload URLs:
#: OneDrive personal (*.files.1drv.com, api.onedrive.com, my.microsoftpersonalcontent.com,
#: *.livefilestore.com, storage.live.com), SharePoint / OneDrive for Business in the worldwide,
#: US government (sharepoint.us) and China (sharepoint.cn) clouds, and Graph's own hosts.
DEFAULT_CONTENT_DOMAINS = (
    "1drv.com",
    "onedrive.com",
    "microsoftpersonalcontent.com",
    "livefilestore.com",
    "live.com",
    "sharepoint.com",
    "sharepoint.us",
    "sharepoint.cn",
    "svc.ms",
    "microsoft.com",
)


class UnsafeURLError(requests.exceptions.ConnectionError):
    """A pre-authenticated URL points somewhere it must not (no retry will change that)."""

    permanent = True


class UrlPolicy:
    """Decide whether a pre-authenticated URL may be fetched."""

    def __init__(self, graph_base_url: str, domains: Iterable[str] = DEFAULT_CONTENT_DOMAINS):
        base = urlsplit(graph_base_url)
        self.graph_origin = (base.scheme.lower(), base.netloc.lower())
        self.domains = tuple(d.strip().lower().lstrip(".") for d in domains if d.strip())

    def allows(self, url: str) -> bool:
        """Return whether ``url`` may be fetched."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            return False
        if (parts.scheme.lower(), parts.netloc.lower()) == self.graph_origin:
            return True
        if parts.scheme.lower() != "https" or not host or parts.username or parts.password:
            return False
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass
        else:
            return False  # Microsoft hands out names, never addresses: refuse every IP literal
        return any(host == d or host.endswith("." + d) for d in self.domains)

    def check(self, url: str) -> None:
        """Raise ``UnsafeURLError`` (without the URL: it may carry a credential) if refused."""
        if not self.allows(url):
            raise UnsafeURLError("Graph handed back a URL outside the allowed content hosts")


class PolicyAdapter(HTTPAdapter):
    """A transport adapter that checks every request's URL against a ``UrlPolicy`` first."""

    def __init__(self, policy: UrlPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        """Refuse a URL the policy does not allow; send the others as usual."""
        self.policy.check(request.url or "")
        return super().send(request, *args, **kwargs)


def enforce(session: requests.Session, policy: UrlPolicy) -> None:
    """Make ``session`` refuse every URL (any scheme, every redirect hop) ``policy`` refuses."""
    adapter = PolicyAdapter(policy)
    for prefix in ("https://", "http://", ""):
        session.mount(prefix, adapter)


def graph_link_parts(link: str, base_url: str) -> tuple[list[str], set[str]] | None:
    """Return a Graph link's decoded path segments below ``base_url`` and its query keys.

    None unless the link is on the Graph origin and root (same scheme, host and path prefix),
    has no fragment, and no dot or empty segment (raw or percent-encoded): ``requests`` removes
    dot segments before sending, so a substring test let ``…/children/../../root/children``
    list the drive root (probe L4). Callers then compare the segments whole.
    """
    try:
        parts, base = urlsplit(link), urlsplit(base_url.rstrip("/"))
    except ValueError:
        return None
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc) or parts.fragment:
        return None
    if not parts.path.startswith(base.path + "/"):
        return None
    segments = [unquote(s) for s in parts.path[len(base.path) + 1 :].split("/")]
    if any(s in ("", ".", "..") or "/" in s for s in segments):
        return None
    return segments, {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
