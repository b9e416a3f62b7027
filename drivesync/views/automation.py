"""Automatic sync settings: "Sync new and changed files automatically", Pause and Resume."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, flash, request, url_for
from flask_login import current_user, login_required
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from ..services import autosync, notices
from .htmx import redirect_to

bp = Blueprint("automation", __name__, url_prefix="/settings/onedrive/automatic")


def _back(message: str) -> Any:
    flash(message, "success")
    return redirect_to(url_for("onedrive.settings") + "#automation")


@bp.post("/")
@login_required
def save() -> Any:
    """Switch automatic sync of new and changed files on or off."""
    enabled = request.form.get("enabled") == "on"
    autosync.set_enabled(current_user.id, enabled)
    if enabled:
        return _back("New and changed files now go to OneDrive automatically.")
    return _back("Automatic sync is off: new and changed files wait for Sync All.")


@bp.post("/pause")
@login_required
def pause() -> Any:
    """Pause automatic syncing and retries."""
    autosync.pause(current_user.id)
    return _back("Automatic syncing is paused. Sync All still works when you want it.")


@bp.post("/resume")
@login_required
def resume() -> Any:
    """Resume automatic syncing and retries."""
    autosync.resume(current_user.id)
    return _back("Automatic syncing resumed.")


def _sync_notice() -> notices.Notice | None:
    """Return the signed-in user's failure banner (called by base.html only, so partials
    rendered for htmx never pay for the query)."""
    if not current_user.is_authenticated:
        return None
    try:
        return notices.banner(int(current_user.id))
    except SQLAlchemyError:  # an error page must render even when the database is the error
        db.session.rollback()
        return None


def init_app(app: Flask) -> None:
    """Give templates the failure banner."""
    app.context_processor(lambda: {"sync_notice": _sync_notice})
