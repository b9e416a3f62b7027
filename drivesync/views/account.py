"""Your account: Activity, a file's sync history, "Download all my data", "Delete my account"."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_login import current_user, login_required, logout_user

from ..extensions import limiter
from ..services import audit, deletion, history, quota
from ..services import export as export_service
from ..services.errors import ValidationError
from ..services.integrations import get_integration
from ..web import storage
from .htmx import redirect_to

bp = Blueprint("account", __name__)

# Ids past PostgreSQL's int range are 404, not a 500 (probe finding L8).
ID = "int(max=2147483647)"


@bp.record_once
def _subscribe(state: Any) -> None:
    """Start hearing the domain events once the blueprint is registered."""
    audit.subscribe()
    history.subscribe()


@bp.app_context_processor
def _usage() -> dict[str, Any]:
    """Give every template ``storage_usage()`` (queried only when a template calls it)."""

    def storage_usage() -> quota.Usage | None:
        if not current_user.is_authenticated:
            return None
        return quota.usage(current_user.id)

    return {"storage_usage": storage_usage}


def _page() -> int:
    try:
        return int(request.args.get("page", "1"))
    except ValueError:
        return 1


@bp.get("/account/")
@login_required
def index() -> Any:
    """Show storage use and the ways to see, take or delete your data."""
    return render_template("account/index.html", usage=quota.usage(current_user.id))


@bp.get("/account/activity")
@login_required
def activity() -> Any:
    """List the user's own audit entries, newest first, in plain sentences."""
    listing = audit.activity(current_user.id, page=_page())
    return render_template(
        "account/activity.html",
        listing=listing,
        names=audit.live_file_names(current_user.id, listing.items),
        sentences=audit.SENTENCES,
        deleted=history.deleted_files(current_user.id),
    )


@bp.get(f"/files/<{ID}:file_id>/history")
@login_required
def file_history(file_id: int) -> Any:
    """List what happened to one of the user's files, newest first."""
    f, rows = history.file_history(current_user.id, file_id)
    return render_template("account/file_history.html", file=f, file_id=file_id, rows=rows)


@bp.get("/account/export")
@login_required
def export() -> Any:
    """Offer "Download all my data", with the latest background export if any."""
    export_service.purge_expired(current_user.id, storage())
    job = export_service.latest_job(current_user.id)
    return render_template(
        "account/export.html",
        job=job,
        token=_token(job),
        background=export_service.runs_in_background(current_user.id),
        size=quota.usage(current_user.id).used,
    )


def _token(job: Any) -> str | None:
    return export_service.download_token(job) if job is not None and job.status == "done" else None


@bp.post("/account/export")
@login_required
def export_start() -> Any:
    """Stream a small export as a zip now; queue a large one and show its progress."""
    if export_service.runs_in_background(current_user.id):
        export_service.start_export(current_user.id)
        flash("Your export is being prepared. This page shows when it is ready.", "info")
        return redirect_to(url_for("account.export"))
    stream = export_service.stream_export(current_user.id, storage())
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Response(
        stream,
        mimetype="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="drivesync-export-{stamp}.zip"',
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@bp.get(f"/account/export/<{ID}:job_id>/status")
@login_required
def export_status(job_id: int) -> Any:
    """Render one background export's progress (polled while it runs)."""
    job = export_service.get_job(current_user.id, job_id)
    return render_template("account/_export_status.html", job=job, token=_token(job))


@bp.get("/account/export/download/<token>")
@login_required
def export_download(token: str) -> Any:
    """Send a finished background export to the user the link was made for."""
    _job, path = export_service.open_download(current_user.id, token, storage())
    response = send_file(
        path,
        mimetype="application/zip",
        as_attachment=True,
        download_name="drivesync-export.zip",
        max_age=0,
    )
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _delete_key() -> str:
    """Rate-limit key for password checks on the deletion form: one account, any address."""
    return f"delete-account:{current_user.id}"


@bp.route("/account/delete", methods=["GET", "POST"])
@login_required
@limiter.limit(
    lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"], key_func=_delete_key
)
def delete() -> Any:
    """Delete the account after the password is entered again."""
    errors: dict[str, str] = {}
    if request.method == "POST":
        try:
            deletion.delete_account(current_user.id, request.form.get("password", ""), storage())
        except ValidationError as e:
            errors = e.errors
        else:
            logout_user()
            flash("Your account and all its data were deleted from drivesync.", "info")
            return redirect_to(url_for("accounts.login"))
    integration = get_integration(current_user.id)
    return render_template(
        "account/delete.html",
        errors=errors,
        drive_type=integration.drive_type if integration is not None else None,
    ), (400 if errors else 200)
