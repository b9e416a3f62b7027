"""HTMX plumbing: detect htmx requests, redirect them, and vary caches on them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import redirect, request
from flask_htmx import HTMX
from werkzeug.urls import iri_to_uri

htmx = HTMX()


def is_htmx() -> bool:
    """Return whether the current request was made by htmx."""
    return request.headers.get("HX-Request") == "true"


def redirect_to(url: str) -> Any:
    """Redirect a normal request with 303, and an htmx one with ``HX-Redirect``.

    htmx follows a 302 inside the XHR and swaps the result in, which is never what we want
    after a state change; ``HX-Redirect`` makes it load the page instead.
    """
    if is_htmx():
        # A header must be Latin-1: percent-encode any other character (probe L8).
        return "", 204, {"HX-Redirect": iri_to_uri(url)}
    return redirect(url, code=303)


def safe_next(target: str | None, default: str) -> str:
    """Return ``target`` if it is a path on this site, else ``default`` (no open redirects)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or not target.isprintable():  # control, DEL, U+2028 … (probe L8)
        return default
    return target


def vary_on_htmx(response: Any) -> Any:
    """Mark a response that differs for htmx and normal requests (caches must not mix them)."""
    response.vary.add("HX-Request")
    return response
