"""The file library: list, upload, download, rename, replace, delete."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, render_template, request, send_file, url_for
from flask_login import current_user, login_required
from werkzeug.datastructures import FileStorage

from ..services import imports, integrations
from ..services import library as library_service
from ..services.errors import ValidationError
from ..services.storage import IncomingFile
from ..web import storage
from .htmx import redirect_to, safe_next, vary_on_htmx

bp = Blueprint("library", __name__, url_prefix="/library")


def _incoming(part: FileStorage) -> IncomingFile:
    stream = part.stream
    if not isinstance(stream, IncomingFile):  # pragma: no cover - StreamingRequest guarantees it
        raise ValidationError({"file": "Upload could not be read."})
    return stream


def _parts() -> list[FileStorage]:
    return [p for p in request.files.getlist("files") if p.filename]


@bp.get("/")
@login_required
def index() -> Any:
    """List the user's files, sorted and paginated."""
    try:
        page = int(request.args.get("page", "1"))
    except ValueError:
        page = 1
    listing = library_service.list_files(
        current_user.id,
        sort=request.args.get("sort", library_service.DEFAULT_SORT),
        page=page,
        per_page=current_app.config["PAGE_SIZE"],
    )
    integration = integrations.get_integration(current_user.id)
    template = "library/_table.html" if request.headers.get("HX-Target") == "library" else None
    response = current_app.make_response(
        render_template(
            template or "library/index.html",
            listing=listing,
            # Where OneDrive is expected to hold a file, for "in OneDrive as …".
            folder_path=integration.folder_path if integration is not None else None,
            importing=imports.versions_importing(current_user.id),
        )
    )
    return vary_on_htmx(response)


@bp.post("/upload")
@login_required
def upload() -> Any:
    """Add one or many uploaded files to the library."""
    parts = _parts()
    if not parts:
        raise ValidationError({"file": "Choose at least one file to upload."})
    added, refused = [], []
    for part in parts:
        try:
            added.append(
                library_service.add_file(
                    current_user.id, part.filename or "", _incoming(part), storage()
                )
            )
        except ValidationError as e:
            refused.append(f"{part.filename!r}: {e.message}")
    if added:
        flash(f"Uploaded {len(added)} file{'s' if len(added) != 1 else ''}.", "success")
    for reason in refused:
        flash(f"Not uploaded {reason}", "error")
    return redirect_to(url_for("library.index"))


@bp.get("/<int:file_id>/download")
@login_required
def download(file_id: int) -> Any:
    """Send the file as an attachment under its original name."""
    f = library_service.download_file(current_user.id, file_id)
    response = send_file(
        storage().path(f.stored_path),
        mimetype=f.mime_type,
        as_attachment=True,  # never rendered inline: uploaded HTML/SVG cannot run as our origin
        download_name=f.original_name,
        etag=f.content_hash,
        conditional=True,
        max_age=0,
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.post("/<int:file_id>/rename")
@login_required
def rename(file_id: int) -> Any:
    """Rename a file (the way to fix a file OneDrive refused for its name)."""
    f = library_service.get_file(current_user.id, file_id)  # 404 before 400 for others' ids
    old = f.original_name
    synced_as = f.onedrive_name if f.onedrive_id else None
    failed = f.onedrive_sync_status == "error"
    f = library_service.rename_file(current_user.id, file_id, request.form.get("name", ""))
    if f.original_name == old:
        flash(f"{old} keeps its name.", "info")
    elif synced_as:
        flash(
            f"Renamed {old} to {f.original_name}. The copy in OneDrive keeps its name {synced_as}.",
            "success",
        )
    elif failed:
        flash(f"Renamed {old} to {f.original_name}. It waits for the next Sync All.", "success")
    else:
        flash(f"Renamed {old} to {f.original_name}.", "success")
    return redirect_to(safe_next(request.form.get("next"), url_for("library.index")))


@bp.post("/<int:file_id>/replace")
@login_required
def replace(file_id: int) -> Any:
    """Replace a file's bytes with a new version."""
    parts = _parts() or [p for p in request.files.getlist("file") if p.filename]
    if len(parts) != 1:
        library_service.get_file(current_user.id, file_id)  # 404 before 400 for other users' ids
        raise ValidationError({"file": "Choose exactly one file as the new version."})
    f = library_service.replace_file(current_user.id, file_id, _incoming(parts[0]), storage())
    flash(f"Replaced {f.original_name} with a new version.", "success")
    return redirect_to(url_for("library.index"))


@bp.post("/<int:file_id>/delete")
@login_required
def delete(file_id: int) -> Any:
    """Delete a file and its bytes."""
    library_service.delete_file(current_user.id, file_id, storage())
    flash("File deleted.", "info")
    return redirect_to(url_for("library.index"))
