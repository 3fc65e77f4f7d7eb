"""Walking a cursor-paginated listing page by page, refusing a repeated cursor."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from etbridge.jsonapi import Page, RepeatedCursor, parse_page, where

MAX_PAGE_SIZE = 100


class DocumentSource(Protocol):
    """What a paginator needs: one GET that returns a JSON:API document."""

    def get_document(
        self, org_id: str | None, path: str, params: Mapping[str, str]
    ) -> dict[str, Any]: ...


class Paginator(Iterator[Page]):
    """Walks a cursor-paginated listing, one validated :class:`Page` per step.

    Stops after a page without ``has_more`` or without a next cursor. Raises
    :class:`RepeatedCursor` (a :class:`MalformedResponse`) when the API hands
    back a cursor it already gave, which would loop forever. ``cursor`` is
    always where the next page starts, so a caller that saves it after
    committing a page can resume there; after a retriable error, calling
    ``next()`` again asks for the same page.
    """

    def __init__(
        self,
        client: DocumentSource,
        org_id: str | None,
        resource: str,
        params: Mapping[str, str],
        *,
        after: str | None = None,
        page_size: int | None = MAX_PAGE_SIZE,
    ) -> None:
        self._client = client
        self.org_id = org_id
        self.resource = resource
        self._params = dict(params)
        self._page_size = page_size
        self.path = f"/v2/{resource}"
        self.cursor: str | None = after
        self.pages_fetched = 0
        self.done = False
        self._used: set[str] = {after} if after else set()

    def __iter__(self) -> Paginator:
        return self

    def __next__(self) -> Page:
        if self.done:
            raise StopIteration
        params = dict(self._params)
        if self._page_size is not None:
            params["page[size]"] = str(self._page_size)
        if self.cursor is not None:
            params["page[after]"] = self.cursor
        doc = self._client.get_document(self.org_id, self.path, params)
        page = parse_page(
            doc, resource=self.resource, cursor=self.cursor, org_id=self.org_id, path=self.path
        )
        if page.next_cursor is not None:
            if page.next_cursor in self._used:
                self.done = True
                raise RepeatedCursor(
                    f"{where(self.org_id, self.path)}: the API repeated a cursor "
                    f"after {self.pages_fetched + 1} pages"
                )
            self._used.add(page.next_cursor)
        else:
            self.done = True
        self.cursor = page.next_cursor
        self.pages_fetched += 1
        return page
