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

from ..formats import state_sentence
from ..graph.errors import GraphError
from ..models import REMOTE_POLICIES
from ..services import changes, imports, integrations, overview, remote, subscriptions
from ..services import library as library_service
from ..services import sync as sync_service
from ..services.errors import Conflict, ServiceError
from ..vault import VaultError
from .errors import error_response
from .htmx import is_htmx, redirect_to, safe_next, vary_on_htmx

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
    """Show the connection card, status dashboard, pending files and how-it-works guide.

    Opening the page asks for a check of OneDrive's changes (at most once a minute).
    """
    changes.request_check(current_user.id)
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
    untracked = [e.id for e in page.entries if not e.is_folder and e.library_file_id is None]
    template = "onedrive/_browse_rows.html" if is_htmx() else "onedrive/browse.html"
    html = render_template(
        template,
        page=page,
        new_ids=changes.untracked_item_ids(current_user.id, untracked),
        jobs={j.item_id: j for j in imports.active_jobs(current_user.id) if j.kind == "new"},
    )
    return vary_on_htmx(current_app.make_response(html))


def _import_answer(job: Any) -> Any:
    """Render an import's progress: the row's partial for htmx, a full page otherwise."""
    template = "onedrive/_import_status.html" if is_htmx() else "onedrive/import.html"
    return vary_on_htmx(current_app.make_response(render_template(template, job=job)))


@bp.post("/import")
@login_required
def import_file() -> Any:
    """Start importing a OneDrive file into the library (a background job with progress)."""
    item_id = request.form.get("item_id", "")
    if not item_id or len(item_id) > 256:
        abort(400, "Choose a OneDrive file to import.")
    try:
        job = imports.start_import(current_user.id, item_id)
    except (integrations.NotConnected, integrations.ReauthRequired) as exc:
        return _back_to_settings(exc.message)
    except Conflict as exc:
        if is_htmx():
            raise  # refused() shows it in the flash area
        flash(exc.message, "error")
        return redirect(url_for("onedrive.browse"), code=303)
    if is_htmx():
        return _import_answer(job)
    return redirect(url_for("onedrive.import_status", job_id=job.id), code=303)


@bp.get("/imports/<int:job_id>")
@login_required
def import_status(job_id: int) -> Any:
    """Show an import's progress; the partial polls itself while the job is active."""
    return _import_answer(imports.job_status(current_user.id, job_id))


def _after_file_action(file_id: int, message: str | None = None) -> Any:
    """Answer a file's action: back to the library when it came from there, else the list."""
    target = request.form.get("next")
    if not target:
        return _after_action()
    f = library_service.get_file(current_user.id, file_id)
    flash(message or f"{f.original_name}: {state_sentence(f.onedrive_sync_status)}", "success")
    return redirect_to(safe_next(target, url_for("library.index")))


@bp.post("/files/<int:file_id>/import-version")
@login_required
def import_version(file_id: int) -> Any:
    """Import OneDrive's newer version of a file (a background job)."""
    try:
        job = imports.start_version_import(current_user.id, file_id)
    except (integrations.NotConnected, integrations.ReauthRequired) as exc:
        return _back_to_settings(exc.message)
    if job.status == "done":
        return _after_file_action(file_id, f"Imported OneDrive's version of {job.name}.")
    return _after_file_action(file_id, f"Importing OneDrive's version of {job.name}.")


@bp.post("/files/<int:file_id>/keep-library-version")
@login_required
def keep_library_version(file_id: int) -> Any:
    """Keep the library's version of a file OneDrive has a newer version of (uploaded again)."""
    sync_service.keep_library_version(current_user.id, file_id)
    return _after_file_action(
        file_id, "The library's version is being uploaded, replacing OneDrive's copy."
    )


@bp.post("/files/<int:file_id>/upload-again")
@login_required
def upload_again(file_id: int) -> Any:
    """Upload again a file deleted in OneDrive (or kept only in the library)."""
    f = sync_service.upload_again(current_user.id, file_id)
    return _after_file_action(file_id, f"{f.original_name} goes to OneDrive with the next sync.")


@bp.post("/files/<int:file_id>/keep-only-in-library")
@login_required
def keep_only_in_library(file_id: int) -> Any:
    """Keep a file deleted in OneDrive only in the library (until Upload again)."""
    f = sync_service.keep_only_in_library(current_user.id, file_id)
    return _after_file_action(file_id, f"{f.original_name} is kept only in the library.")


POLICY_SAVED = {
    "ask": "Files deleted in OneDrive will wait for your choice.",
    "upload": "Files deleted in OneDrive go back to OneDrive with the next sync.",
    "keep": "Files deleted in OneDrive will be kept only in the library.",
}


@bp.post("/policy")
@login_required
def policy() -> Any:
    """Save what a deletion in OneDrive does to a synced file."""
    value = request.form.get("policy", "")
    if value not in REMOTE_POLICIES:
        abort(400, "Choose Ask me, Upload it again or Keep it only in the library.")
    changes.set_policy(current_user.id, value)
    flash(POLICY_SAVED[value], "success")
    return redirect_to(_settings_url() + "#remote-policy")
