"""In-memory state of the emulator: accounts, drives, items, OAuth artefacts, upload sessions.

Everything lives in one :class:`EmulatorState` guarded by a re-entrant lock; file bytes live in a
temporary folder (``data_dir``). Request handlers stream bodies to disk outside the lock and only
take it to read or change the maps below.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from drivesync.graph.quickxor import QuickXorHash

from .faults import Faults

DEFAULT_QUOTA = 5 * 1024**3  # 5 GiB, the free OneDrive plan
ACCESS_TOKEN_LIFETIME = 3600
CODE_LIFETIME = 600  # codes are "typically expiring after about 10 minutes"
UPLOAD_SESSION_LIFETIME = timedelta(hours=1)


def utcnow() -> datetime:
    """Return the current UTC time."""
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """Format ``dt`` the way Graph does (UTC, ``Z`` suffix, milliseconds)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def new_secret(nbytes: int = 32) -> str:
    """Return an unguessable URL-safe token."""
    return secrets.token_urlsafe(nbytes)


@dataclass
class Client:
    """An app registration."""

    client_id: str
    client_secret: str | None
    redirect_uris: list[str]
    app_name: str


@dataclass
class Account:
    """A Microsoft account (personal) or a work account (business), each with one drive."""

    email: str
    display_name: str
    drive_type: str
    quota_total: int
    user_id: str
    drive_id: str
    quota_exceeded: bool = False


@dataclass
class Item:
    """A driveItem: a file or a folder."""

    id: str
    drive_id: str
    name: str
    parent_id: str | None
    is_folder: bool
    created: datetime
    modified: datetime
    fs_created: datetime
    fs_modified: datetime
    guid: str = field(default_factory=lambda: str(uuid.uuid4()).upper())
    size: int = 0
    blob: str | None = None
    quick_xor: str | None = None
    mime_type: str = "application/octet-stream"
    version: int = 1  # eTag counter: any change
    content_version: int = 1  # cTag counter: content changes
    seq: int = 0  # change sequence for delta
    deleted: bool = False
    # Delta history: (seq, parent id) from creation on, one entry per move; the seq of deletion.
    # A delta scoped to a folder needs where the item was at the token's seq, not only now.
    parents: list[tuple[int, str | None]] = field(default_factory=list)
    deleted_seq: int | None = None
    indexed: tuple[str, str] | None = None  # its key in Drive.kids: (parent id, folded name)
    counted: int = 0  # its bytes in Drive.used
    special: str | None = None  # "approot"
    created_by_app: str | None = None


@dataclass
class Drive:
    """One drive and its items."""

    id: str
    drive_type: str
    owner_email: str
    root_id: str
    items: dict[str, Item] = field(default_factory=dict)
    next_item: int = 101
    approots: dict[str, str] = field(default_factory=dict)  # client app name -> item id
    # Indexes kept by EmulatorState._reindex, so a folder of 10,000 items stays fast:
    kids: dict[str, dict[str, str]] = field(default_factory=dict)  # parent -> folded name -> id
    used: int = 0  # bytes of live files


@dataclass
class AuthCode:
    """An issued authorization code."""

    code: str
    client_id: str
    redirect_uri: str
    email: str
    scopes: list[str]
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    expires_at: datetime
    redeemed: bool = False


@dataclass
class AccessToken:
    """An opaque bearer token for Graph."""

    token: str
    email: str
    client_id: str
    scopes: list[str]
    expires_at: datetime
    revoked: bool = False


@dataclass
class RefreshToken:
    """A refresh token; rotated (and the old one invalidated) on every use."""

    token: str
    email: str
    client_id: str
    scopes: list[str]
    valid: bool = True
    revoked: bool = False


@dataclass
class PendingAuthorize:
    """A validated /authorize request waiting for the user's Accept or Cancel."""

    id: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    state: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    response_mode: str
    login_hint: str | None


@dataclass
class UploadSession:
    """A resumable upload: bytes arrive in order into ``part_path``."""

    id: str
    drive_id: str
    email: str
    client_id: str
    parent_id: str
    name: str
    conflict: str
    target_item_id: str | None
    part_path: str
    expires_at: datetime
    total: int | None = None
    received: int = 0
    hash: QuickXorHash = field(default_factory=QuickXorHash)
    fs_created: datetime | None = None
    fs_modified: datetime | None = None
    defer_commit: bool = False
    busy: bool = False
    completed: bool = False
    expired: bool = False


def _personal_drive_id() -> str:
    return secrets.token_hex(8)


def _business_drive_id() -> str:
    return "b!" + base64.urlsafe_b64encode(secrets.token_bytes(48)).decode().rstrip("=")


class EmulatorState:
    """All emulator state. Use ``with state.lock:`` around every read-modify-write."""

    def __init__(self, data_dir: str | None = None, *, seed_demo: bool = True) -> None:
        """Create the state, with the two demo accounts unless ``seed_demo`` is false."""
        self.lock = threading.RLock()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="drivesync-emulator-")
        for sub in ("blobs", "sessions", "tmp"):
            os.makedirs(os.path.join(self.data_dir, sub), exist_ok=True)
        self.download_key = secrets.token_bytes(32)
        self.seed_demo = seed_demo
        self.default_latency = 0.0  # seconds added to every non-admin request; kept on reset
        self.latency = 0.0
        # Called with every new or changed item, under the lock (subscriptions.py's notifier:
        # it only records the item; deliveries leave from its own thread).
        self.change_hooks: list[Callable[[Item], None]] = []
        self._init_maps()
        if seed_demo:
            self.seed()

    def _init_maps(self) -> None:
        self.clients: dict[str, Client] = {}
        self.accounts: dict[str, Account] = {}
        self.drives: dict[str, Drive] = {}
        self.codes: dict[str, AuthCode] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.pending: dict[str, PendingAuthorize] = {}
        self.sessions: dict[str, UploadSession] = {}
        self.faults = Faults()
        self.token_lifetime = ACCESS_TOKEN_LIFETIME
        self.seq = 0
        self.epoch = new_secret(6)  # delta tokens from before a reset are refused (410)
        self.delta_enumerations: dict[str, object] = {}  # onedrive_emulator.delta's page cache
        self.requests: list[dict[str, object]] = []
        self.subscriptions: dict[str, Any] = {}  # id -> subscriptions.Subscription

    def seed(self) -> None:
        """Create the demo accounts."""
        self.add_account("alex@contoso.example", "Alex Wilber", "personal")
        self.add_account("megan@fabrikam.example", "Megan Bowen", "business")

    def reset(self) -> None:
        """Forget everything except registered clients; re-create the demo accounts."""
        with self.lock:
            clients = self.clients
            self._wipe_files()
            self._init_maps()
            self.clients = clients
            self.latency = self.default_latency
            if self.seed_demo:
                self.seed()

    def set_latency(self, seconds: float, *, default: bool = False) -> None:
        """Add ``seconds`` to every non-admin request (``default``: also after a reset)."""
        if not 0 <= seconds <= 60:
            raise ValueError("latency must be between 0 and 60 seconds")
        with self.lock:
            self.latency = float(seconds)
            if default:
                self.default_latency = float(seconds)

    def _wipe_files(self) -> None:
        for sub in ("blobs", "sessions", "tmp"):
            path = os.path.join(self.data_dir, sub)
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path, exist_ok=True)

    def close(self) -> None:
        """Remove the temporary folder if the state created it."""
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # ---- paths ---------------------------------------------------------------------------
    def tmp_path(self) -> str:
        """Return a fresh path for a temporary upload file."""
        return os.path.join(self.data_dir, "tmp", uuid.uuid4().hex)

    def blob_path(self) -> str:
        """Return a fresh path for committed file content."""
        return os.path.join(self.data_dir, "blobs", uuid.uuid4().hex)

    # ---- registry --------------------------------------------------------------------------
    def register_client(
        self,
        client_id: str,
        client_secret: str | None,
        redirect_uris: list[str],
        app_name: str | None = None,
    ) -> Client:
        """Register (or replace) an app registration."""
        with self.lock:
            client = Client(client_id, client_secret, list(redirect_uris), app_name or client_id)
            self.clients[client_id] = client
            return client

    def add_account(
        self,
        email: str,
        display_name: str,
        drive_type: str = "personal",
        quota_total: int = DEFAULT_QUOTA,
    ) -> Account:
        """Create an account with an empty drive (or return the existing one)."""
        if drive_type not in ("personal", "business"):
            raise ValueError("drive_type must be 'personal' or 'business'")
        key = email.casefold()
        with self.lock:
            if key in self.accounts:
                return self.accounts[key]
            drive_id = _personal_drive_id() if drive_type == "personal" else _business_drive_id()
            user_id = drive_id if drive_type == "personal" else str(uuid.uuid4())
            account = Account(email, display_name, drive_type, quota_total, user_id, drive_id)
            self.accounts[key] = account
            drive = Drive(drive_id, drive_type, key, root_id="")
            self.drives[drive_id.casefold()] = drive
            root = self.new_item(drive, "root", None, is_folder=True)
            drive.root_id = root.id
            return account

    def account(self, email: str) -> Account | None:
        """Look an account up by e-mail, case-insensitively."""
        return self.accounts.get(email.casefold())

    def drive_of(self, account: Account) -> Drive:
        """Return the account's drive."""
        return self.drives[account.drive_id.casefold()]

    # ---- items -----------------------------------------------------------------------------
    def _new_item_id(self, drive: Drive) -> str:
        if drive.drive_type == "personal":
            n = drive.next_item
            drive.next_item += 1
            return f"{drive.id.upper()}!{n}"
        return "01" + base64.b32encode(secrets.token_bytes(20)).decode()[:32]

    def bump(self, item: Item, *, content: bool = False) -> None:
        """Record a change to ``item`` (new eTag; new cTag too when the content changed)."""
        self.seq += 1
        item.seq = self.seq
        item.version += 1
        if content:
            item.content_version += 1
        item.modified = utcnow()
        if item.parents and item.parents[-1][1] != item.parent_id:
            item.parents.append((self.seq, item.parent_id))
        if item.deleted and item.deleted_seq is None:
            item.deleted_seq = self.seq
        self._reindex(item)
        for hook in self.change_hooks:
            hook(item)

    def _reindex(self, item: Item) -> None:
        """Bring the drive's child-name index and used bytes up to date with ``item``."""
        drive = self.drives[item.drive_id.casefold()]
        key = None if item.deleted or item.parent_id is None else (item.parent_id, item.name)
        key = (key[0], key[1].casefold()) if key else None
        if key != item.indexed:
            if item.indexed is not None:
                names = drive.kids.get(item.indexed[0], {})
                if names.get(item.indexed[1]) == item.id:
                    del names[item.indexed[1]]
            if key is not None:
                drive.kids.setdefault(key[0], {})[key[1]] = item.id
            item.indexed = key
        counted = 0 if item.deleted or item.is_folder else item.size
        drive.used += counted - item.counted
        item.counted = counted

    def new_item(
        self,
        drive: Drive,
        name: str,
        parent_id: str | None,
        *,
        is_folder: bool,
        fs_created: datetime | None = None,
        fs_modified: datetime | None = None,
    ) -> Item:
        """Create an item under ``parent_id`` (no name checks here)."""
        now = utcnow()
        self.seq += 1
        item = Item(
            id=self._new_item_id(drive),
            drive_id=drive.id,
            name=name,
            parent_id=parent_id,
            is_folder=is_folder,
            created=now,
            modified=now,
            fs_created=fs_created or now,
            fs_modified=fs_modified or now,
            seq=self.seq,
            parents=[(self.seq, parent_id)],
        )
        drive.items[item.id] = item
        self._reindex(item)
        for hook in self.change_hooks:
            hook(item)
        return item

    def children(self, drive: Drive, parent_id: str) -> list[Item]:
        """Return the live children of a folder, sorted by name."""
        names = drive.kids.get(parent_id, {})
        return [drive.items[names[n]] for n in sorted(names)]

    def child_named(self, drive: Drive, parent_id: str, name: str) -> Item | None:
        """Return the live child called ``name`` (case-insensitive, like OneDrive)."""
        item_id = drive.kids.get(parent_id, {}).get(name.casefold())
        return drive.items[item_id] if item_id is not None else None

    def item_path(self, drive: Drive, item: Item) -> str:
        """Return the item's path below the root, like ``/Apps/x/file.txt`` ("" for the root)."""
        parts: list[str] = []
        cur: Item | None = item
        while cur is not None and cur.parent_id is not None:
            parts.append(cur.name)
            cur = drive.items.get(cur.parent_id)
        return "/" + "/".join(reversed(parts)) if parts else ""

    def used_bytes(self, drive: Drive) -> int:
        """Return the bytes used by live files in the drive."""
        return drive.used

    def delete_item(self, drive: Drive, item: Item) -> None:
        """Mark ``item`` and its descendants deleted and remove their blobs."""
        stack = [item]
        while stack:
            cur = stack.pop()
            stack.extend(self.children(drive, cur.id))
            cur.deleted = True
            self.bump(cur)
            if cur.blob:
                _unlink(cur.blob)
                cur.blob = None

    def set_content(self, item: Item, blob: str, size: int, quick_xor: str) -> None:
        """Point ``item`` at new content (``blob`` is moved into place by the caller)."""
        old = item.blob
        item.blob, item.size, item.quick_xor = blob, size, quick_xor
        if old and old != blob:
            _unlink(old)
        self.bump(item, content=True)

    def approot(self, drive: Drive, app_name: str) -> Item:
        """Return ``/Apps/<app name>``, creating it on first use."""
        item_id = drive.approots.get(app_name)
        if item_id and not drive.items[item_id].deleted:
            return drive.items[item_id]
        apps = self.child_named(drive, drive.root_id, "Apps")
        if apps is None:
            apps = self.new_item(drive, "Apps", drive.root_id, is_folder=True)
        folder = self.child_named(drive, apps.id, app_name)
        if folder is None:
            folder = self.new_item(drive, app_name, apps.id, is_folder=True)
        folder.special = "approot"
        drive.approots[app_name] = folder.id
        return folder

    # ---- tokens ----------------------------------------------------------------------------
    def issue_tokens(self, email: str, client_id: str, scopes: list[str]) -> dict[str, object]:
        """Issue an access token (and a refresh token with offline_access); return raw parts."""
        with self.lock:
            lifetime = self.token_lifetime
            access = AccessToken(
                "EwB" + new_secret(48),
                email.casefold(),
                client_id,
                scopes,
                utcnow() + timedelta(seconds=lifetime),
            )
            self.access_tokens[access.token] = access
            out: dict[str, object] = {"access_token": access.token, "expires_in": lifetime}
            if "offline_access" in scopes:
                refresh = RefreshToken("M.C" + new_secret(64), email.casefold(), client_id, scopes)
                self.refresh_tokens[refresh.token] = refresh
                out["refresh_token"] = refresh.token
            return out

    def expire_access_tokens(self, after_seconds: float) -> None:
        """Make new tokens live ``after_seconds``; cut the lifetime of tokens already issued."""
        with self.lock:
            self.token_lifetime = max(0, int(after_seconds))
            limit = utcnow() + timedelta(seconds=after_seconds)
            for token in self.access_tokens.values():
                token.expires_at = min(token.expires_at, limit)

    def revoke_consent(self, email: str) -> None:
        """Withdraw the user's consent: refresh and access tokens stop working."""
        key = email.casefold()
        with self.lock:
            for refresh in self.refresh_tokens.values():
                if refresh.email == key:
                    refresh.revoked = True
            for access in self.access_tokens.values():
                if access.email == key:
                    access.revoked = True

    # ---- upload sessions ----------------------------------------------------------------------
    def expire_upload_sessions(self) -> None:
        """Expire every open upload session and drop its bytes."""
        with self.lock:
            for session in self.sessions.values():
                self._expire(session)

    def _expire(self, session: UploadSession) -> None:
        session.expired = True
        _unlink(session.part_path)

    def live_session(self, session_id: str) -> UploadSession | None:
        """Return the session unless unknown, cancelled or expired."""
        with self.lock:
            session = self.sessions.get(session_id)
            if session is None or session.expired:
                return None
            if session.expires_at <= utcnow():
                self._expire(session)
                return None
            return session

    def log_request(self, entry: dict[str, object]) -> None:
        """Append to the request log."""
        with self.lock:
            self.requests.append(entry)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
