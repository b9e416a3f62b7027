"""Thin blueprints: parse the request, call one service, pick a template."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    """Register every blueprint on ``app``."""
    from . import accounts, automation, library, onedrive

    app.register_blueprint(accounts.bp)
    app.register_blueprint(library.bp)
    app.register_blueprint(onedrive.bp)
    app.register_blueprint(automation.bp)
    automation.init_app(app)
