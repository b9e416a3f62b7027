"""The embedded default: ``python app.py`` (or ``./bin/run``).

Starts the local OneDrive emulator, then the app on SQLite with local storage, the
in-process sync worker and the in-process scheduler, upgrades the database, creates a demo
account on first run and prints the URL and the demo credentials. Nothing here is for
production: use ``wsgi.py``.

Set ``DRIVESYNC_MS_CLIENT_ID`` (and the secret) to talk to the real Microsoft identity
platform instead of the emulator.
"""

from __future__ import annotations

import os
import secrets
import sys

DEMO_EMAIL = "demo@drivesync.local"
DEMO_PASSWORD = "drivesync-demo"  # noqa: S105 - a published local-only demo credential


def main() -> int:
    """Start the emulator and the development server; return an exit status."""
    if os.environ.get("DRIVESYNC_ENV") == "production":
        print("app.py is the development entry point; run gunicorn wsgi:app in production.")
        return 2
    # The database, uploads, keys and outbox are private to this user (probe L9).
    os.umask(0o077)
    host = os.environ.get("DRIVESYNC_HOST", "127.0.0.1")
    port = int(os.environ.get("DRIVESYNC_PORT", "5000"))
    emulator = None
    if not os.environ.get("DRIVESYNC_MS_CLIENT_ID"):
        from onedrive_emulator.server import EmulatorServer

        client_id, secret = "drivesync-local", secrets.token_urlsafe(24)
        callbacks = [
            f"http://{name}:{port}/settings/onedrive/callback"
            for name in ("127.0.0.1", "localhost", host)
        ]
        emulator = EmulatorServer(
            "127.0.0.1",
            int(os.environ.get("DRIVESYNC_EMULATOR_PORT", "5001")),
            clients=[(client_id, secret, sorted(set(callbacks)))],
        ).start()
        os.environ.update(
            DRIVESYNC_MS_CLIENT_ID=client_id,
            DRIVESYNC_MS_CLIENT_SECRET=secret,
            DRIVESYNC_MS_AUTHORITY=emulator.url,
            DRIVESYNC_GRAPH_URL=emulator.url + "/v1.0",
            DRIVESYNC_EMULATOR_URL=emulator.url,
        )
    os.environ.setdefault("DRIVESYNC_TASK_BACKEND", "thread")

    from flask_migrate import upgrade

    from drivesync import create_app
    from drivesync.extensions import db
    from drivesync.models import User
    from drivesync.services import accounts, scheduler

    app = create_app()
    with app.app_context():
        upgrade()
        demo = db.session.execute(
            db.select(User).where(User.email == DEMO_EMAIL)
        ).scalar_one_or_none()
        if demo is None:
            accounts.create_user(DEMO_EMAIL, DEMO_PASSWORD)
    # The embedded scheduler: retries, debounced automatic syncs, recovery (every 30 s).
    scheduler.start_in_process(app)
    url = f"http://{host}:{port}/"
    print("\n  drivesync is running (development; in-process sync worker, SQLite)")
    print(f"  open      {url}")
    print(f"  sign in   {DEMO_EMAIL} / {DEMO_PASSWORD}   (or create your own account)")
    if emulator:
        print(f"  OneDrive  local emulator at {emulator.url} (accounts alex@contoso.example,")
        print("            megan@fabrikam.example; it starts empty on every run)")
    if app.config.get("SMTP_URL"):
        print("  mail      sent through DRIVESYNC_SMTP_URL")
    else:
        from drivesync.mail import outbox_dir

        print(f"  mail      written to {outbox_dir(app)}/ (sign-up and password reset links)")
    print("  stop      Ctrl+C\n", flush=True)
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        if emulator:
            emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
