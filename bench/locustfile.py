"""Locust users for bench/load.py (run through it; it seeds the users and starts gunicorn).

``SettingsUser``: signs in, opens the OneDrive settings page, then polls the progress partial as
htmx does (re-opening the page now and then), back to back. ``StaticUser``: fetches a static
file back to back from the same gunicorn: the baseline the pages are compared with.
"""

from __future__ import annotations

import itertools
import os
import re

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

_EMAILS = itertools.cycle(os.environ["BENCH_EMAILS"].split(","))
_PASSWORD = os.environ["BENCH_PASSWORD"]
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class SettingsUser(FastHttpUser):
    """A signed-in user with 1,000 files watching a sync on the settings page."""

    wait_time = constant(0)

    def on_start(self) -> None:
        """Sign in through the form (CSRF token included)."""
        page = self.client.get("/login", name="sign-in (setup)")
        token = _CSRF.search(page.text).group(1)
        r = self.client.post(
            "/login",
            data={"csrf_token": token, "email": next(_EMAILS), "password": _PASSWORD},
            name="sign-in (setup)",
            allow_redirects=False,
        )
        if r.status_code not in (302, 303):
            raise RuntimeError(f"sign-in failed: {r.status_code}")

    @task(1)
    def settings_page(self) -> None:
        """Open the settings page."""
        self.client.get("/settings/onedrive/", name="settings page")

    @task(5)
    def progress(self) -> None:
        """Poll the progress partial like htmx does."""
        self.client.get(
            "/settings/onedrive/progress", name="progress partial", headers={"HX-Request": "true"}
        )


class StaticUser(FastHttpUser):
    """Fetches a static file from the same gunicorn, back to back."""

    wait_time = constant(0)

    @task
    def static_file(self) -> None:
        """Fetch the stylesheet."""
        self.client.get("/static/app.css", name="static file")
