"""Domain events: what happened, announced once, heard by whoever keeps a record of it.

The code where a thing happens sends one signal (blinker, which Flask already uses); the audit
log, the per-file sync history and the metrics subscribe in their own modules. So the sync engine
knows nothing of auditing, and the account views nothing of metrics.

Every signal is sent with ``sender=None`` and keyword arguments only, e.g.
``events.file_synced.send(None, user_id=1, file_id=2, item_id="…", size=10)``. Receivers run in
the sender's thread and inside its database transaction (when it has one); a receiver that writes
rows adds them to the current session and leaves the commit to the sender. Arguments are ids,
plain values and short reasons: never a token, a password, file content or a pre-authenticated
URL.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

# Accounts and sessions (user_id; sign_in_failed carries only the e-mail as typed, normalised).
account_created = _signals.signal("account-created")
signed_in = _signals.signal("signed-in")
sign_in_failed = _signals.signal("sign-in-failed")
signed_out = _signals.signal("signed-out")
sessions_ended = _signals.signal("sessions-ended")  # sign out everywhere
password_changed = _signals.signal("password-changed")
password_reset_requested = _signals.signal("password-reset-requested")
password_reset = _signals.signal("password-reset")
account_deleted = _signals.signal("account-deleted")

# The OneDrive connection (user_id; reconnect_needed also carries ``reason``).
connected = _signals.signal("connected")
reconnected = _signals.signal("reconnected")
disconnected = _signals.signal("disconnected")
reconnect_needed = _signals.signal("reconnect-needed")

# Library files (user_id, file_id; plus what each says below).
file_uploaded = _signals.signal("file-uploaded")  # size
file_replaced = _signals.signal("file-replaced")  # size
file_renamed = _signals.signal("file-renamed")  # old_name, new_name
file_deleted = _signals.signal("file-deleted")
file_downloaded = _signals.signal("file-downloaded")
file_imported = _signals.signal("file-imported")  # item_id, size
file_synced = _signals.signal("file-synced")  # item_id, etag, size, replaced (bool)
file_failed = _signals.signal("file-failed")  # reason, kind ("transient"|"permanent"|"user")
file_conflict = _signals.signal("file-conflict")  # reason
conflict_resolved = _signals.signal("conflict-resolved")  # action
# A change made in OneDrive to a tracked file: change ("edited"|"renamed"|"deleted"|"restored"),
# item_id, name (the new name of a rename or restore)
file_remote_changed = _signals.signal("file-remote-changed")
data_exported = _signals.signal("data-exported")
# Microsoft refused this server's own app credentials (reason: client_secret_expired|…): the
# operator must act; users are not asked to reconnect. Sent per failed token request.
app_credentials_rejected = _signals.signal("app-credentials-rejected")
token_refreshed = _signals.signal("token-refreshed")  # outcome: "ok"|"rejected"|"error" (ops)
