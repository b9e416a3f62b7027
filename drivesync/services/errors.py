"""Errors services raise; views turn them into pages or partials."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses, with a message safe to show the user."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    """The object does not exist, or belongs to someone else (indistinguishable on purpose)."""

    status = 404

    def __init__(self, message: str = "Not found.") -> None:
        super().__init__(message)


class ValidationError(ServiceError):
    """Input that breaks a rule; ``errors`` maps field names to messages."""

    status = 400

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(" ".join(errors.values()))
        self.errors = errors


class Conflict(ServiceError):
    """The object is not in a state that allows this change."""

    status = 409
