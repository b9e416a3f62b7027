"""Typed SQLAlchemy 2 models: User, Integration, OAuthToken, File, SyncRun."""

from __future__ import annotations

from datetime import UTC, datetime

from flask_login import UserMixin
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import true
from sqlalchemy.types import TypeDecorator

from .extensions import Model

SYNC_STATUSES = (
    "not_synced",
    "syncing",
    "synced",
    "error",
    "conflict",
    # Changes made in OneDrive (services/changes.py, issue 11): a newer version there, the item
    # deleted (or moved out of the sync folder) there, and the user's "keep only in the library".
    "remote_changed",
    "remote_deleted",
    "local_only",
)
# What a remote deletion does to a synced file: ask, upload it again, keep it only in the library.
REMOTE_POLICIES = ("ask", "upload", "keep")
IMPORT_STATUSES = ("queued", "running", "done", "failed")
# An import makes a new library file, or a new version of a file that tracks the item.
IMPORT_KINDS = ("new", "version")
INTEGRATION_STATUSES = ("active", "needs_reauth")
RUN_STATUSES = ("queued", "running", "done", "failed", "stopped")
# Why a file failed (services/failures.py): retried on a schedule, never, or when the user acts.
FAILURE_KINDS = ("transient", "permanent", "user")


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite drops the zone, so add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _percent(finished: bool, bytes_done: int, bytes_total: int, done: int, total: int) -> int:
    """Return progress from 0 to 100: by bytes, by items when there are no bytes; 100 once ended."""
    if finished:
        return 100
    if bytes_total:
        return min(100, int(bytes_done * 100 / bytes_total))
    return int(done * 100 / total) if total else 0


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class User(UserMixin, Model):
    """A person who signs in. E-mail is stored case-folded and unique."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"<User {self.id}>"


class Integration(Model):
    """One user's connection to a storage provider (one per user and provider)."""

    __tablename__ = "integrations"
    __table_args__ = (
        UniqueConstraint("user_id", "provider", name="uq_integrations_user_provider"),
        CheckConstraint(_in("status", INTEGRATION_STATUSES), name="status"),
        CheckConstraint("provider IN ('onedrive')", name="provider"),
        CheckConstraint(_in("remote_policy", REMOTE_POLICIES), name="remote_policy"),
        Index("idx_integrations_autosync_due", "autosync_due_at"),
        Index("idx_integrations_delta_due", "delta_due_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32), default="onedrive")
    status: Mapped[str] = mapped_column(String(16), default="active")
    account_id: Mapped[str | None] = mapped_column(String(128))
    account_name: Mapped[str | None] = mapped_column(String(255))
    account_email: Mapped[str | None] = mapped_column(String(254))
    drive_id: Mapped[str | None] = mapped_column(String(128))
    # personal | business | documentLibrary, as Graph reports driveType
    drive_type: Mapped[str | None] = mapped_column(String(32))
    folder_path: Mapped[str] = mapped_column(String(400), default="drivesync")
    folder_id: Mapped[str | None] = mapped_column(String(128))
    quota_used: Mapped[int | None] = mapped_column(BigInteger)
    quota_total: Mapped[int | None] = mapped_column(BigInteger)
    status_reason: Mapped[str | None] = mapped_column(String(500))
    connected_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_sync_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Automatic sync (services/autosync.py): the user's setting, Pause, the debounced due time.
    autosync: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    autosync_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The scheduler's last keep-alive refresh attempt (services/scheduler.py).
    keepalive_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The current failure episode (services/notices.py): when it began, when it was notified.
    notice_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notice_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Change detection on OneDrive (services/changes.py): the delta cursor of the sync folder,
    # when it was last checked (successfully), when the next check is due (NULL: none is
    # scheduled; connecting schedules the first), the last check's failure and how many in a
    # row, and the files in the folder that no library file tracks ("3 new files in your
    # OneDrive folder").
    delta_link: Mapped[str | None] = mapped_column(Text, deferred=True)
    delta_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delta_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delta_error: Mapped[str | None] = mapped_column(String(500))
    delta_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    remote_new_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    remote_policy: Mapped[str] = mapped_column(String(16), default="ask", server_default="ask")

    token: Mapped[OAuthToken | None] = relationship(
        back_populates="integration", cascade="all, delete-orphan", uselist=False, lazy="select"
    )

    @property
    def active(self) -> bool:
        """Return whether the integration can be used without the user reconnecting."""
        return self.status == "active"

    def __repr__(self) -> str:
        return f"<Integration {self.id} {self.provider} {self.status}>"


class OAuthToken(Model):
    """Encrypted tokens of one integration. Only the vault reads the ciphertext columns."""

    __tablename__ = "oauth_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(
        ForeignKey("integrations.id", ondelete="CASCADE"), unique=True
    )
    # user_id is denormalised so that row-level security can scope this table directly.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    access_token_encrypted: Mapped[str] = mapped_column(Text, deferred=True)
    refresh_token_encrypted: Mapped[str | None] = mapped_column(Text, deferred=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    scope: Mapped[str] = mapped_column(String(500), default="")
    key_id: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    integration: Mapped[Integration] = relationship(back_populates="token")

    # The scheduler's keep-alive looks for tokens not refreshed for weeks.
    __table_args__ = (Index("idx_oauth_tokens_updated_at", "updated_at"),)

    def __repr__(self) -> str:
        # Never include the token columns, not even encrypted.
        return f"<OAuthToken integration={self.integration_id} key={self.key_id}>"


class File(Model):
    """A file in a user's library, with its OneDrive sync state."""

    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint(_in("onedrive_sync_status", SYNC_STATUSES), name="sync_status"),
        CheckConstraint("size >= 0", name="size"),
        CheckConstraint(
            f"failure_kind IS NULL OR {_in('failure_kind', FAILURE_KINDS)}", name="failure_kind"
        ),
        Index("idx_files_next_attempt", "next_attempt_at"),
        Index("idx_files_failing_since", "failing_since"),
        Index("idx_files_onedrive_id", "onedrive_id"),
        Index("idx_files_onedrive_sync_status", "onedrive_sync_status"),
        Index("idx_files_owner_onedrive_status", "owner_id", "onedrive_sync_status"),
        Index("idx_files_owner_created", "owner_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    original_name: Mapped[str] = mapped_column(String(255))
    stored_path: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    mime_type: Mapped[str] = mapped_column(String(255))
    content_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex
    quick_xor_hash: Mapped[str] = mapped_column(String(40))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    onedrive_id: Mapped[str | None] = mapped_column(String(128))
    onedrive_sync_status: Mapped[str] = mapped_column(String(16), default="not_synced")
    onedrive_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    onedrive_error: Mapped[str | None] = mapped_column(String(500))
    onedrive_etag: Mapped[str | None] = mapped_column(String(255))
    onedrive_ctag: Mapped[str | None] = mapped_column(String(255))
    onedrive_path: Mapped[str | None] = mapped_column(String(1024))
    onedrive_web_url: Mapped[str | None] = mapped_column(String(2048))
    onedrive_name: Mapped[str | None] = mapped_column(String(255))
    onedrive_note: Mapped[str | None] = mapped_column(String(255))
    synced_content_hash: Mapped[str | None] = mapped_column(String(64))
    # The content the user chose to keep off OneDrive ("Skip" on a conflict): Sync All leaves
    # the file alone while its content_hash still equals this.
    skipped_hash: Mapped[str | None] = mapped_column(String(64))
    sync_run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id", ondelete="SET NULL"))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    upload_url: Mapped[str | None] = mapped_column(Text, deferred=True)
    upload_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Failures and retries (services/failures.py); onedrive_error holds the reason shown.
    sync_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failure_kind: Mapped[str | None] = mapped_column(String(16))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def pending(self) -> bool:
        """Return whether the file still has to reach OneDrive."""
        return self.onedrive_sync_status in {"not_synced", "error", "conflict"}

    def __repr__(self) -> str:
        return f"<File {self.id} {self.onedrive_sync_status}>"


class SyncRun(Model):
    """One "Sync All": which files it took, and how far it got."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        CheckConstraint("resolve IS NULL OR resolve IN ('keep_both', 'replace')", name="resolve"),
        Index("idx_sync_runs_status", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    total: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Stamped by the run's heartbeat thread (services/liveness.py) while a worker is on it.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When the scheduler last sent this run to the queue, and how often it had to.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    requeues: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A conflict decision (keep_both | replace) this run carries out: stored, so a run queued
    # again after its message or worker was lost still does what the user chose.
    resolve: Mapped[str | None] = mapped_column(String(16))

    @property
    def finished(self) -> bool:
        """Return whether the run has ended, well or badly."""
        return self.status in {"done", "failed", "stopped"}

    @property
    def done(self) -> int:
        """Return how many files the run has finished with, either way."""
        return self.succeeded + self.failed

    @property
    def percent(self) -> int:
        """Return overall progress by bytes (by files when the run has no bytes), 0 to 100."""
        return _percent(self.finished, self.bytes_done, self.bytes_total, self.done, self.total)

    def __repr__(self) -> str:
        return f"<SyncRun {self.id} {self.status} {self.done}/{self.total}>"


class UserSession(Model):
    """One signed-in session (a browser's sign-in, and its remember-me cookie if asked for).

    The cookie carries ``<user id>:<token>``; only the token's SHA-256 is stored. Deleting the
    row ends the session and its remember-me cookie on the server (sign-out, password change,
    sign out everywhere); ``expires_at`` bounds it whatever the cookie claims.
    """

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    remember: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<UserSession {self.id} user={self.user_id}>"


# --- Accountability and data rights (issue 12): audit log, per-file history, exports ---

AUDIT_ACTORS = ("user", "operator", "system")
EXPORT_STATUSES = ("queued", "running", "done", "failed")


class AuditEvent(Model):
    """One append-only audit entry: who did what to which object, from where.

    No foreign key to ``users``: entries outlive the account (pseudonymised, ``user_id`` set to
    NULL and ``actor_hash`` to a keyed hash) until the retention period prunes them. Objects are
    ids, never file names (a name is health data; the owner's pages read it from the live row).
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        CheckConstraint(_in("actor", AUDIT_ACTORS), name="actor"),
        Index("idx_audit_events_user_created", "user_id", "created_at"),
        Index("idx_audit_events_created", "created_at"),
        # No RETURNING on insert: PostgreSQL would check the new row against the SELECT
        # policy, and entries about a user are written before anyone is in scope (sign-in).
        {"implicit_returning": False},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The account the entry belongs to (who sees it on Activity); NULL once pseudonymised,
    # and for failed sign-ins to unknown addresses and operator actions on no account.
    user_id: Mapped[int | None] = mapped_column(Integer)
    # user | operator | system; NULL when nobody is known (a failed sign-in)
    actor: Mapped[str | None] = mapped_column(String(16))
    actor_hash: Mapped[str | None] = mapped_column(String(64))  # keyed hash after deletion
    action: Mapped[str] = mapped_column(String(40))
    object_type: Mapped[str | None] = mapped_column(String(24))
    object_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(String(200))
    source_ip: Mapped[str | None] = mapped_column(String(45))
    request_id: Mapped[str | None] = mapped_column(String(64))

    def __repr__(self) -> str:
        return f"<AuditEvent {self.id} {self.action}>"


class FileEvent(Model):
    """One line of a file's sync history. Outlives the file, not the account."""

    __tablename__ = "file_events"
    __table_args__ = (Index("idx_file_events_user_file", "user_id", "file_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # No foreign key: the history of a deleted file stays (shown from Activity).
    file_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(24))
    item_id: Mapped[str | None] = mapped_column(String(128))
    etag: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int | None] = mapped_column(BigInteger)
    # A reason, an action, or "old → new" names of a rename (the owner's own data).
    detail: Mapped[str | None] = mapped_column(String(600))

    def __repr__(self) -> str:
        return f"<FileEvent {self.id} file={self.file_id} {self.kind}>"


class ExportJob(Model):
    """A background "Download all my data": progress, then a zip in storage until it expires."""

    __tablename__ = "export_jobs"
    __table_args__ = (
        CheckConstraint(_in("status", EXPORT_STATUSES), name="status"),
        Index("idx_export_jobs_status", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_path: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Recovery (services/scheduler.py): a lost message or a dead worker is queued again.
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    requeues: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    @property
    def finished(self) -> bool:
        """Return whether the export has ended, well or badly."""
        return self.status in {"done", "failed"}

    @property
    def percent(self) -> int:
        """Return progress by bytes (by files when there are no bytes), 0 to 100."""
        return _percent(
            self.finished, self.bytes_done, self.bytes_total, self.files_done, self.files_total
        )

    def __repr__(self) -> str:
        return f"<ExportJob {self.id} {self.status}>"


# --- OneDrive's side (issue 11): the folder's mirror, delta staging, subscriptions, imports ---


class RemoteItem(Model):
    """One item of the user's OneDrive sync folder as the last complete delta left it.

    Tracked by id (delta items carry no path): renames and moves are followed by ``parent_id``
    and ``name``. A library file tracks an item through ``files.onedrive_id``.
    """

    __tablename__ = "remote_items"
    __table_args__ = (
        UniqueConstraint("integration_id", "item_id", name="uq_remote_items_integration_item"),
        Index("idx_remote_items_user", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    integration_id: Mapped[int] = mapped_column(ForeignKey("integrations.id", ondelete="CASCADE"))
    item_id: Mapped[str] = mapped_column(String(128))
    parent_id: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(255), default="")
    is_folder: Mapped[bool] = mapped_column(Boolean, default=False)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    etag: Mapped[str | None] = mapped_column(String(255))
    ctag: Mapped[str | None] = mapped_column(String(255))
    quick_xor_hash: Mapped[str | None] = mapped_column(String(40))
    modified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<RemoteItem {self.item_id}>"


class RemoteItemChange(Model):
    """A delta page's item, staged until the last page arrives (one row per item: last wins).

    A check applies the staged rows in one transaction after the ``@odata.deltaLink``; a
    check that fails part-way deletes them, so a partial listing changes nothing.
    """

    __tablename__ = "remote_item_changes"
    __table_args__ = (
        UniqueConstraint(
            "integration_id", "item_id", name="uq_remote_item_changes_integration_item"
        ),
        Index("idx_remote_item_changes_user", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    integration_id: Mapped[int] = mapped_column(ForeignKey("integrations.id", ondelete="CASCADE"))
    item_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(Integer, default=0)  # order of arrival
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    parent_id: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(255))
    is_folder: Mapped[bool] = mapped_column(Boolean, default=False)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    etag: Mapped[str | None] = mapped_column(String(255))
    ctag: Mapped[str | None] = mapped_column(String(255))
    quick_xor_hash: Mapped[str | None] = mapped_column(String(40))
    modified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<RemoteItemChange {self.item_id}>"


class GraphSubscription(Model):
    """A Microsoft Graph change-notification subscription on the user's drive.

    ``client_state_encrypted`` is the vault's ciphertext of the random ``clientState`` that
    every notification must carry; ``renew_at`` is when the scheduler renews it (ahead of
    ``expires_at``). Notifications find their row by ``subscription_id`` through the
    ``drivesync_subscription_owner`` function on PostgreSQL (RLS: no user is signed in).
    """

    __tablename__ = "graph_subscriptions"
    __table_args__ = (
        Index("idx_graph_subscriptions_renew", "renew_at"),
        Index("idx_graph_subscriptions_user", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    integration_id: Mapped[int] = mapped_column(
        ForeignKey("integrations.id", ondelete="CASCADE"), unique=True
    )
    subscription_id: Mapped[str] = mapped_column(String(128), unique=True)
    resource: Mapped[str] = mapped_column(String(400))
    notification_url: Mapped[str] = mapped_column(String(2048))
    client_state_encrypted: Mapped[str] = mapped_column(Text, deferred=True)
    key_id: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    renew_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(String(500))

    def __repr__(self) -> str:
        # Never the client state, not even encrypted.
        return f"<GraphSubscription {self.id} user={self.user_id}>"


class ImportJob(Model):
    """A background import of a OneDrive file: a new library file, or a new version of one."""

    __tablename__ = "import_jobs"
    __table_args__ = (
        CheckConstraint(_in("status", IMPORT_STATUSES), name="status"),
        CheckConstraint(_in("kind", IMPORT_KINDS), name="kind"),
        Index("idx_import_jobs_user_status", "user_id", "status"),
        Index("idx_import_jobs_status", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="new")
    item_id: Mapped[str] = mapped_column(String(128))
    # "version": the library file that gets OneDrive's version; "new": the file made, once done.
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    requeues: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    @property
    def finished(self) -> bool:
        """Return whether the import has ended, well or badly."""
        return self.status in {"done", "failed"}

    @property
    def percent(self) -> int:
        """Return progress by bytes, 0 to 100."""
        return _percent(self.finished, self.bytes_done, self.bytes_total, 0, 0)

    def __repr__(self) -> str:
        return f"<ImportJob {self.id} {self.kind} {self.status}>"
