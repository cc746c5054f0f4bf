"""The Documents service: a key's uploaded documents, kept as their metadata and extracted text (the file
itself is not kept). Extraction is extract.py's; choosing what of a document goes into a prompt is
retrieval.py's."""

from __future__ import annotations

import sqlalchemy as sa

from ..storage.tables import documents as table
from . import listing

METADATA = ("id", "filename", "media_type", "pages", "characters", "created_at")


class DocumentNotFound(LookupError):
    """No such document for this key (another key's documents are not found either)."""


class Documents:
    def __init__(self, database):
        self._database = database

    def add(self, key_name: str, filename: str, extracted) -> dict:
        """Store an extracted document (an extract.Extracted); returns its metadata."""
        row = {"id": listing.new_id("doc"), "key_name": key_name, "filename": filename[:255],
               "media_type": extracted.media_type, "pages": extracted.pages, "characters": len(extracted.text),
               "text": extracted.text, "created_at": listing.now()}
        with self._database.engine.begin() as connection:
            connection.execute(table.insert().values(**row))
        return {name: row[name] for name in METADATA}

    def page(self, key_name: str, limit: int, cursor: str | None) -> tuple[list[dict], str | None]:
        with self._database.engine.connect() as connection:
            return listing.page(connection, table, table.c.key_name == key_name, limit, cursor,
                                [table.c[name] for name in METADATA])

    def get(self, key_name: str, document_id: str, text: bool = True) -> dict:
        columns = [table.c[name] for name in METADATA + (("text",) if text else ())]
        with self._database.engine.connect() as connection:
            row = connection.execute(sa.select(*columns).where(
                table.c.id == document_id, table.c.key_name == key_name)).first()
        if row is None:
            raise DocumentNotFound(document_id)
        return dict(row._mapping)

    def many(self, key_name: str, document_ids: list[str]) -> list[dict]:
        """The key's documents named, with their text, in the order named; DocumentNotFound for any other."""
        wanted = list(dict.fromkeys(document_ids))
        with self._database.engine.connect() as connection:
            rows = {row.id: dict(row._mapping) for row in connection.execute(sa.select(table).where(
                table.c.id.in_(wanted), table.c.key_name == key_name))}
        missing = [document_id for document_id in wanted if document_id not in rows]
        if missing:
            raise DocumentNotFound(missing[0])
        return [rows[document_id] for document_id in wanted]

    def delete(self, key_name: str, document_id: str) -> None:
        with self._database.engine.begin() as connection:
            deleted = connection.execute(table.delete().where(
                table.c.id == document_id, table.c.key_name == key_name)).rowcount
        if not deleted:
            raise DocumentNotFound(document_id)
