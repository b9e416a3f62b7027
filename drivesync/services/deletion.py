"""Delete an account and everything of it, keeping only pseudonymised audit entries.

Order matters:

1. the password is checked again;
2. the OneDrive connection is disconnected (``integrations.disconnect``: tokens destroyed), so
   no background job can act for the account any more;
3. every stored byte of the user (library files, export zips) is deleted, before the rows that
   point at it: a crash here leaves an account that can be deleted again, never bytes nobody
   can find;
4. every row of the user is deleted (their own tables explicitly; tables added later go by the
   foreign keys' ON DELETE CASCADE), and the audit entries are pseudonymised, in one
   transaction with the "account deleted" entry.

Copies already on OneDrive are left alone: they are in the user's own drive.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete

from .. import events
from ..extensions import db
from ..models import ExportJob, File, FileEvent, SyncRun, User, UserSession
from . import accounts, audit, integrations, subscriptions
from .errors import NotFound, ValidationError
from .storage import LocalStorage

logger = logging.getLogger(__name__)


def delete_account(user_id: int, password: str, storage: LocalStorage) -> None:
    """Delete the user's account, data and bytes after checking ``password``."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound("That account does not exist.")
    if not accounts.check_password(user, password):
        raise ValidationError(
            {"password": "That is not your current password. Your account was not deleted."}
        )
    subscriptions.remove(user_id)  # Graph would notify for up to 30 days otherwise
    integrations.disconnect(user_id)
    names = list(
        db.session.execute(db.select(File.stored_path).where(File.owner_id == user_id)).scalars()
    )
    names += [
        n
        for n in db.session.execute(
            db.select(ExportJob.stored_path).where(ExportJob.user_id == user_id)
        ).scalars()
        if n
    ]
    for name in names:
        storage.delete(name)
    for model, column in (
        (FileEvent, FileEvent.user_id),
        (ExportJob, ExportJob.user_id),
        (File, File.owner_id),
        (SyncRun, SyncRun.user_id),
        (UserSession, UserSession.user_id),  # every sign-in ends with the account
    ):
        db.session.execute(
            delete(model).where(column == user_id),
            execution_options={"synchronize_session": False},
        )
    audit.pseudonymise(user_id)
    db.session.execute(
        delete(User).where(User.id == user_id), execution_options={"synchronize_session": False}
    )
    events.account_deleted.send(None, user_id=user_id)
    db.session.commit()
    db.session.expunge_all()
    logger.info("an account was deleted (%d stored files removed)", len(names))
