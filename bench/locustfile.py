"""Locust users for bench/load.py (run through it; it seeds the users, starts gunicorn and signs
them in beforehand, so Argon2 stays out of the measurement).

``SettingsUser``: with a signed-in session cookie, opens the OneDrive settings page, then
polls the progress partial as htmx does (re-opening the page now and then). ``StaticUser``:
fetches a static file from the same gunicorn: the baseline the pages are compared with. Both
wait ``BENCH_WAIT`` seconds between requests (0: back to back, a closed loop at saturation).
"""

from __future__ import annotations

import itertools
import os

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

#: One "Cookie" header per signed-in user, separated by newlines (bench/load.py signs them in).
_COOKIES = itertools.cycle(os.environ["BENCH_COOKIES"].split("\n"))


class SettingsUser(FastHttpUser):
    """A signed-in user with 1,000 files watching a sync on the settings page."""

    wait_time = constant(float(os.environ.get("BENCH_WAIT", "0")))

    def on_start(self) -> None:
        """Take the next signed-in session."""
        self.cookie = next(_COOKIES)

    @task(1)
    def settings_page(self) -> None:
        """Open the settings page."""
        self.client.get(
            "/settings/onedrive/", name="settings page", headers={"Cookie": self.cookie}
        )

    @task(5)
    def progress(self) -> None:
        """Poll the progress partial like htmx does."""
        self.client.get(
            "/settings/onedrive/progress",
            name="progress partial",
            headers={"HX-Request": "true", "Cookie": self.cookie},
        )


class StaticUser(FastHttpUser):
    """Fetches a static file from the same gunicorn, back to back."""

    wait_time = constant(float(os.environ.get("BENCH_WAIT", "0")))

    @task
    def static_file(self) -> None:
        """Fetch the stylesheet."""
        self.client.get("/static/app.css", name="static file")
