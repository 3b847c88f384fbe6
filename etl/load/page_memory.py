"""What a stream remembers of the pages it loaded, so a page that comes again costs little.

The cron re-sync of a batch whose calls barely moved meets mostly pages that are byte for byte
the pages of the last run. For each page of a listing that was loaded without a rejected
record, the loader keeps the digest of the page as it came and, for each of its records in
order, the row it is and the record's own digest (`members`). Then:

- a page that comes again with the same digest, whose rows none has claimed in this listing
  and none is marked removed, is unchanged: its rows are claimed, nothing else is read or
  written;
- a page that changed is compared record by record with what was remembered at the same
  position: a record whose digest is the remembered one is its remembered row, unchanged; only
  the others are looked up, normalized and written.

Any doubt (another page claimed a remembered row, a row was marked removed) sends the record
down the full path, which then remembers the page anew, or forgets it if a record was
rejected. A listing that changed a row forgets the pages of the batch's other listings of the
stream (a filtered listing writes rows an unfiltered page may name), so a memory is only ever
of rows as its page last left them. The normalizer's version is part of the listing's key: a
newer normalizer reads every page again once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, delete, select

from etl.extract.pagination import Page
from etl.load.backends import backend_for
from etl.load.schema import etl_listing_pages

p = etl_listing_pages.c
Member = tuple[str, str]
"""A remembered record: the key of its row, and the record's digest."""


@dataclass(frozen=True, slots=True)
class Recollection:
    same_page: bool
    """The page came again byte for byte."""
    members: list[Member]
    """By position: the row each record was, and the record's digest then."""


class PageMemory:
    """The remembered pages of one stream of one batch, for one sync of it."""

    def __init__(self, conn: Connection, batch_id: str, stream: str, version: int) -> None:
        self.conn = conn
        self.batch_id = batch_id
        self.stream = stream
        self.version = version
        self._wrote_in: set[str] = set()

    def key(self, listing: str) -> str:
        """The stored key of a listing (its query, `""` unfiltered) and the normalizer."""
        return f"v{self.version}:{listing}"

    def _where(self, listing: str, page: int) -> ColumnElement[bool]:
        return (
            (p.batch_id == self.batch_id)
            & (p.stream == self.stream)
            & (p.listing == self.key(listing))
            & (p.page == page)
        )

    def recall(self, page: Page, listing: str) -> Recollection | None:
        """What was remembered of this page of this listing, if anything (one read)."""
        if not page.digest:
            return None
        with self.conn.begin():
            found = self.conn.execute(
                select(p.digest, p.members).where(self._where(listing, page.number))
            ).first()
        if found is None:
            return None
        members = [_member(m) for m in found.members.split(",")] if found.members else []
        same = found.digest == page.digest.hex() and len(members) == len(page.results)
        return Recollection(same, members)

    def note(
        self,
        conn: Connection,
        page: Page,
        listing: str,
        members: Sequence[Member | None],
        *,
        wrote: bool,
    ) -> None:
        """After a page went record by record (in its transaction): remember it, or forget
        it if a record was rejected (a None member); after a listing's first write, forget
        the batch's other listings of the stream."""
        if page.digest and all(m is not None for m in members):
            stmt = backend_for(conn).upsert(
                etl_listing_pages,
                key=["batch_id", "stream", "listing", "page"],
                update=["digest", "members"],
            )
            conn.execute(
                stmt,
                {
                    "batch_id": self.batch_id,
                    "stream": self.stream,
                    "listing": self.key(listing),
                    "page": page.number,
                    "digest": page.digest.hex(),
                    "members": ",".join(f"{m[0]}/{m[1]}" for m in members if m is not None),
                },
            )
        else:
            conn.execute(delete(etl_listing_pages).where(self._where(listing, page.number)))
        if wrote and listing not in self._wrote_in:
            self._wrote_in.add(listing)
            conn.execute(
                delete(etl_listing_pages).where(
                    (p.batch_id == self.batch_id)
                    & (p.stream == self.stream)
                    & (p.listing != self.key(listing))
                )
            )


def _member(text: str) -> Member:
    key, _, digest = text.rpartition("/")
    return key, digest
