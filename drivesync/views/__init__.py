"""Thin blueprints: parse the request, call one service, pick a template."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    """Register every blueprint on ``app``."""
    from . import accounts, library

    app.register_blueprint(accounts.bp)
    app.register_blueprint(library.bp)
    try:
        from . import onedrive
    except ImportError:  # TODO: remove once views/onedrive.py lands (issue 4/5).
        return
    app.register_blueprint(onedrive.bp)
