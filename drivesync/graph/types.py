"""The shapes of the Graph JSON we read, with the quirks that bit other clients.

Reference: https://learn.microsoft.com/graph/api/resources/driveitem and rclone's
``backend/onedrive/api/types.go``. Every class is ``total=False``: Graph omits facets freely.
"""

from __future__ import annotations

from typing import TypedDict


class Hashes(TypedDict, total=False):
    """``file.hashes``: which hashes exist depends on the drive type."""

    # Present on Personal and Business since 2023; absent on some zero-byte files and, for a
    # few seconds after an upload, on Business (the service computes it asynchronously).
    quickXorHash: str
    sha1Hash: str  # Personal only, and being withdrawn there (graph changelog, 2023)
    sha256Hash: str  # Personal only, and only sometimes
    crc32Hash: str


class FileFacet(TypedDict, total=False):
    """``file``: present on files only (folders and OneNote packages have other facets)."""

    mimeType: str  # Guessed by the service from the name, not what we sent
    hashes: Hashes


class FolderFacet(TypedDict, total=False):
    """``folder``: presence is how to tell a folder; ``childCount`` may lag behind listings."""

    childCount: int


class FileSystemInfo(TypedDict, total=False):
    """Client-side timestamps: what we set in ``createUploadSession``; ISO 8601 in UTC."""

    createdDateTime: str
    lastModifiedDateTime: str


class ParentReference(TypedDict, total=False):
    """Where the item lives. ``path`` is percent-decoded and prefixed ``/drive/root:``."""

    driveId: str  # Personal ids are 16 hex digits and may differ in case between calls
    driveType: str  # "personal" | "business" | "documentLibrary"
    id: str
    path: str


class PackageFacet(TypedDict, total=False):
    """``package``: e.g. OneNote notebooks; they look like folders but cannot be listed."""

    type: str


class DeletedFacet(TypedDict, total=False):
    """``deleted``: only in delta responses."""

    state: str


# Functional syntax because "@microsoft.graph.downloadUrl" is not an identifier.
DriveItem = TypedDict(
    "DriveItem",
    {
        "id": str,
        "name": str,
        "eTag": str,  # Changes on any change, metadata included
        "cTag": str,  # Changes on content changes only; missing on folders on Business
        "size": int,  # On SharePoint, Office files grow after upload (metadata is written in)
        "webUrl": str,
        "createdDateTime": str,
        "lastModifiedDateTime": str,  # Server time of the last change, not the file's mtime
        "file": FileFacet,
        "folder": FolderFacet,
        "package": PackageFacet,
        "parentReference": ParentReference,
        "fileSystemInfo": FileSystemInfo,
        "deleted": DeletedFacet,
        # Pre-authenticated for about an hour: a credential, never log or render it.
        "@microsoft.graph.downloadUrl": str,
    },
    total=False,
)


class Quota(TypedDict, total=False):
    """``drive.quota``; ``state`` is "normal" | "nearing" | "critical" | "exceeded"."""

    total: int
    used: int
    remaining: int
    deleted: int
    state: str


class IdentitySet(TypedDict, total=False):
    """``owner`` and similar: only ``user.displayName`` is reliable across drive types."""

    user: dict[str, str]


class DriveResource(TypedDict, total=False):
    """``/me/drive``, the Graph resource (the engine's interface is ``graph.drive.Drive``)."""

    id: str
    driveType: str  # "personal" | "business" | "documentLibrary"
    owner: IdentitySet
    quota: Quota
    webUrl: str


class User(TypedDict, total=False):
    """``/me``. ``mail`` is null for many personal accounts: fall back to userPrincipalName."""

    id: str
    displayName: str
    mail: str | None
    userPrincipalName: str


class UploadSessionInfo(TypedDict, total=False):
    """``createUploadSession`` and the session status.

    ``nextExpectedRanges`` reads ``["12345-"]`` on Personal and ``["12345-67890"]`` on Business;
    both forms must parse. ``uploadUrl`` is pre-authenticated: a credential.
    """

    uploadUrl: str
    expirationDateTime: str
    nextExpectedRanges: list[str]


class ChildrenPage(TypedDict, total=False):
    """A page of ``/children``; ``@odata.nextLink`` is absolute and carries its own query."""

    value: list[DriveItem]


BUSINESS_DRIVE_TYPES = frozenset({"business", "documentLibrary"})
