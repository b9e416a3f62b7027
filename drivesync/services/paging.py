"""Page arithmetic shared by every paginated list (the library, the Activity page)."""

from __future__ import annotations


class Pagination:
    """``pages``, ``has_prev`` and ``has_next`` for a page with ``page``, ``per_page``, ``total``.

    A mixin for the frozen dataclasses that hold one page of rows.
    """

    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        """Return the number of pages (at least one)."""
        return max(1, -(-self.total // self.per_page))

    @property
    def has_prev(self) -> bool:
        """Return whether a previous (newer) page exists."""
        return self.page > 1

    @property
    def has_next(self) -> bool:
        """Return whether a next (older) page exists."""
        return self.page < self.pages
