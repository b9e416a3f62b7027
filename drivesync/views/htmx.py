"""HTMX plumbing: detect htmx requests, answer their actions, redirect them, vary caches on them.

The one convention for htmx actions (htmx 2 does not swap 4xx/5xx responses, so an error sent
with its HTTP status never reaches the page):

- success: 2xx with the fragment the element's ``hx-target`` expects, or ``HX-Redirect``;
- failure: 200 with the message, ``HX-Retarget: #flashes`` and ``HX-Reswap: innerHTML``, so it
  lands in the flash area that ``base.html`` puts on every page and the target stays as it was
  (``message_response``; the app's error handlers in ``views/errors.py`` use it for every error);
- not signed in: 401 with ``HX-Redirect`` to sign-in (``views/accounts.py``).

Requests without ``HX-Request`` keep full pages, redirects and flashed messages.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Response, redirect, render_template
from flask_htmx import HTMX, make_response
from werkzeug.urls import iri_to_uri

htmx = HTMX()

FLASH_AREA = "#flashes"  # the id of the flash/message area in templates/base.html


def is_htmx() -> bool:
    """Return whether the current request was made by htmx."""
    return bool(htmx)


def message_response(message: str, category: str = "error", extra_html: str = "") -> Response:
    """Answer an htmx request with ``message`` in the page's flash area (200, retargeted).

    ``extra_html`` may carry ``hx-swap-oob`` fragments that refresh other parts of the page.
    """
    body = render_template("_flashes.html", messages=[(category, message)]) + extra_html
    return make_response(body, 200, retarget=FLASH_AREA, reswap="innerHTML")


def redirect_to(url: str) -> Any:
    """Redirect a normal request with 303, and an htmx one with ``HX-Redirect``.

    htmx follows a 302 inside the XHR and swaps the result in, which is never what we want
    after a state change; ``HX-Redirect`` makes it load the page instead.
    """
    if is_htmx():
        # A header must be Latin-1: percent-encode any other character (probe L8).
        return make_response("", 204, redirect=iri_to_uri(url))
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
