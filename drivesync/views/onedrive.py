"""The OneDrive settings page: connect, disconnect, Sync All with live progress, browse, import."""

from __future__ import annotations

import hmac
import logging
import re
import time
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required

from ..graph.errors import GraphError
from ..services import integrations, overview, remote, subscriptions
from ..services import sync as sync_service
from ..services.errors import Conflict, ServiceError
from ..vault import VaultError
from ..web import storage
from .errors import error_response
from .htmx import is_htmx, redirect_to, vary_on_htmx

logger = logging.getLogger(__name__)

bp = Blueprint("onedrive", __name__, url_prefix="/settings/onedrive")

STATE_TTL = 600  # seconds a sign-in may take before its state expires
RESOLUTIONS = {"keep_both", "replace", "skip"}


def _pkce_context() -> str:
    return f"pkce-verifier:{current_user.id}"


def _settings_url() -> str:
    return url_for("onedrive.settings")


def _page() -> Any:
    data = overview.overview(current_user.id, current_app.config["PENDING_LIST_LIMIT"])
    return render_template("onedrive/settings.html", o=data)


def _pending_partial() -> Any:
    """Render the pending list (with progress) and, out of band, the dashboard."""
    data = overview.overview(current_user.id, current_app.config["PENDING_LIST_LIMIT"])
    return render_template("onedrive/_pending_update.html", o=data)


@bp.errorhandler(ServiceError)
def refused(exc: ServiceError) -> Any:
    """Show why an action was refused; htmx also gets the files list and dashboard refreshed.

    A refused Retry or Resolve usually means the list on screen is out of date (another tab,
    a run that finished): the message goes to the flash area, the fresh list comes out of band.
    """
    fresh = ""
    if is_htmx() and current_user.is_authenticated:
        data = overview.overview(current_user.id, current_app.config["PENDING_LIST_LIMIT"])
        if data.integration is not None:
            fresh = render_template("onedrive/_pending_update.html", o=data, oob=True)
    return error_response(exc.status, "That did not work", exc.message, fresh)


def _after_action() -> Any:
    """Answer a state change: the partial for htmx, a redirect for a plain form."""
    if is_htmx():
        return _pending_partial()
    return redirect(_settings_url(), code=303)


def _back_to_settings(message: str) -> Any:
    """Send the user to the settings page, where Connect / Reconnect is."""
    flash(message, "error")
    return redirect_to(_settings_url())


@bp.get("/")
@login_required
def settings() -> Any:
    """Show the connection card, status dashboard, pending files and how-it-works guide."""
    return _page()


@bp.get("/progress")
@login_required
def progress() -> Any:
    """Return the live pending list; it stops polling itself once the run has ended."""
    return _pending_partial()


@bp.post("/connect")
@login_required
def connect() -> Any:
    """Start the Microsoft sign-in: remember state and PKCE verifier, then redirect."""
    start = integrations.begin_connect(url_for("onedrive.callback", _external=True))
    session["onedrive_oauth"] = {
        "state": start.state,
        # The session cookie is signed, not encrypted: seal the verifier (probe I2).
        "verifier": integrations.vault().encrypt(start.code_verifier, _pkce_context()),
        "user": current_user.id,
        "at": int(time.time()),
    }
    if is_htmx():
        return "", 204, {"HX-Redirect": start.url}
    return redirect(start.url, code=303)


@bp.get("/callback")
@login_required
def callback() -> Any:
    """Finish the Microsoft sign-in: check state, redeem the code, store the connection."""
    pending = session.pop("onedrive_oauth", None)  # single use, whatever happens next
    state = request.args.get("state", "")
    if (
        not pending
        or pending.get("user") != current_user.id
        or int(time.time()) - int(pending.get("at", 0)) > STATE_TTL
        or not hmac.compare_digest(str(pending.get("state", "")), state)
    ):
        abort(400, "This sign-in link has expired or was already used. Start again with Connect.")
    error = request.args.get("error")
    if error:
        if error == "access_denied":
            flash("You cancelled the Microsoft sign-in, so OneDrive was not connected.", "info")
        else:
            # The value comes from the query string: log only a safe form of it (probe I7).
            safe_error = re.sub(r"[^A-Za-z0-9_.-]", "?", error[:80])
            logger.info("OneDrive sign-in for user %s failed: %s", current_user.id, safe_error)
            flash("Microsoft could not complete the sign-in. Please try again.", "error")
        return redirect(_settings_url(), code=303)
    code = request.args.get("code", "")
    if not code or len(code) > 4096:
        abort(400, "Microsoft's answer was missing the authorisation code.")
    try:
        verifier = integrations.vault().decrypt(str(pending.get("verifier", "")), _pkce_context())
    except VaultError:
        abort(400, "This sign-in link has expired or was already used. Start again with Connect.")
    try:
        integration = integrations.complete_connect(
            current_user.id,
            code,
            verifier,
            url_for("onedrive.callback", _external=True),
        )
    except GraphError as exc:
        logger.info("OneDrive connect for user %s failed: %s", current_user.id, exc.code)
        flash(f"OneDrive could not be connected: {exc.human_message()}", "error")
        return redirect(_settings_url(), code=303)
    # After the commit; never breaks connecting (failures are logged, the scheduler retries).
    subscriptions.ensure(current_user.id)
    who = integration.account_email or integration.account_name or "your account"
    flash(f"OneDrive connected as {who}.", "success")
    return redirect(_settings_url(), code=303)


@bp.post("/disconnect")
@login_required
def disconnect() -> Any:
    """Forget the OneDrive connection and its tokens (files stay in the library)."""
    subscriptions.remove(current_user.id)  # best effort on Graph; before the row cascades away
    if integrations.disconnect(current_user.id):
        flash("OneDrive disconnected. Your files are still in your library.", "info")
    return redirect_to(_settings_url())


@bp.post("/sync")
@login_required
def sync_all() -> Any:
    """Queue a background sync of the pending files."""
    try:
        sync_service.request_sync(current_user.id)
    except ServiceError as exc:
        if is_htmx():
            raise  # refused() shows it in the flash area
        flash(exc.message, "error")
        return redirect(_settings_url(), code=303)
    return _after_action()


@bp.post("/files/<int:file_id>/retry")
@login_required
def retry(file_id: int) -> Any:
    """Retry one failed file."""
    sync_service.retry_file(current_user.id, file_id)
    return _after_action()


@bp.post("/files/<int:file_id>/resolve")
@login_required
def resolve(file_id: int) -> Any:
    """Resolve a conflict: keep both, replace OneDrive's copy, or skip."""
    action = request.form.get("action", "")
    if action not in RESOLUTIONS:
        abort(400, "Choose Keep both, Replace OneDrive's copy or Skip.")
    sync_service.resolve_conflict(current_user.id, file_id, action)
    return _after_action()


@bp.get("/browse")
@login_required
def browse() -> Any:
    """List the OneDrive folder's contents, one page at a time."""
    try:
        page = remote.browse(current_user.id, request.args.get("next") or None)
    except (integrations.NotConnected, integrations.ReauthRequired) as exc:
        return _back_to_settings(exc.message)
    template = "onedrive/_browse_rows.html" if is_htmx() else "onedrive/browse.html"
    return vary_on_htmx(current_app.make_response(render_template(template, page=page)))


@bp.post("/import")
@login_required
def import_file() -> Any:
    """Copy a OneDrive file into the library."""
    item_id = request.form.get("item_id", "")
    if not item_id or len(item_id) > 256:
        abort(400, "Choose a OneDrive file to import.")
    try:
        f = remote.import_item(current_user.id, item_id, storage())
    except (integrations.NotConnected, integrations.ReauthRequired) as exc:
        return _back_to_settings(exc.message)
    except Conflict as exc:
        if is_htmx():
            raise  # refused() shows it in the flash area
        flash(exc.message, "error")
        return redirect(url_for("onedrive.browse"), code=303)
    flash(f"Imported {f.original_name} into your library.", "success")
    return redirect_to(url_for("library.index"))
