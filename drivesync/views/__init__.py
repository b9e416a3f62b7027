"""Thin blueprints: parse the request, call one service, pick a template."""

from __future__ import annotations

from flask import Flask

from ..extensions import csrf
from . import account, accounts, automation, errors, library, notifications, onedrive


def register_blueprints(app: Flask) -> None:
    """Register every blueprint on ``app``; ``errors`` answers errors for all of them."""
    app.register_blueprint(errors.bp)
    app.register_blueprint(accounts.bp)
    app.register_blueprint(library.bp)
    app.register_blueprint(onedrive.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(automation.bp)
    automation.init_app(app)
    app.register_blueprint(notifications.bp)
    csrf.exempt(notifications.bp)  # Graph has no session; clientState authenticates instead
