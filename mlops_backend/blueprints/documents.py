"""The Documents service's routes: upload a document (its text is extracted and kept), list, read, delete."""

from __future__ import annotations

from flask import Blueprint, request

from ..errors import ApiError, register_error_handlers
from ..extensions import current_gateway
from ..security import multipart
from ..security.auth import authenticate
from ..services.offload import run_blocking
from .common import guard
from .services import owner, page_of, service_errors

bp = Blueprint("documents", __name__)
register_error_handlers(bp)
bp.before_request(guard)
service_errors(bp)

ROOT = "/api/llm/documents"
#: What each extraction failure is, for the client: the type is not one we read, the file is broken, or too big.
STATUSES = {"UnsupportedType": (415, "Unsupported Media Type", "unsupported-document"),
            "UnreadableDocument": (422, "Unprocessable Entity", "unreadable-document"),
            "DocumentTooLarge": (413, "Request Entity Too Large", "document-too-large")}


@bp.post(ROOT)
def upload():
    """Upload a document (multipart, the file in `file`): PDF, DOCX, plain text, Markdown or HTML.
    ---
    tags: [documents]
    description: |
      The text is extracted and stored with the file's name and type; the file itself is not kept.
      Over MAX_DOCUMENT_BYTES: 413, from Content-Length, before the body is read. A type that is not
      one of these, or that does not match the file's content: 415. An encrypted or broken PDF, a
      DOCX that is not a zip: 422, naming the problem. Nothing is stored on any failure.
    requestBody:
      required: true
      content:
        multipart/form-data:
          schema:
            type: object
            required: [file]
            properties:
              file: {type: string, format: binary}
    responses:
      201:
        description: The stored document's metadata.
        content:
          application/json:
            schema: Document
    """
    from ..services import extract  # pypdf, python-docx and lxml load with the first upload, not the worker

    gateway = current_gateway()
    config = gateway.config
    _, upload = multipart.read_form(config.max_document_bytes, "MAX_DOCUMENT_BYTES", (), "document")
    limits = extract.Limits(max_pages=config.max_document_pages)
    try:
        extracted = run_blocking(extract.extract, upload.data, upload.filename, upload.media_type, limits)
    except extract.DocumentError as error:
        status, title, slug = STATUSES.get(type(error).__name__, STATUSES["UnreadableDocument"])
        raise ApiError(status, title, str(error), slug=slug) from None
    return gateway.documents.add(authenticate(gateway).name, upload.filename, extracted), 201


@bp.get(ROOT)
def list_documents():
    """The key's documents, newest first (metadata only; an admin key may name another key: `?key=NAME`).
    ---
    tags: [documents]
    parameters:
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100, default: 20}}
      - {name: cursor, in: query, schema: {type: string}, description: "`next_cursor` of the page before"}
      - {name: key, in: query, schema: {type: string}, description: "Admin keys only: another key's name"}
    responses:
      200:
        description: One page; a full page carries `next_cursor`.
        content:
          application/json:
            schema: DocumentList
    """
    return page_of("documents", current_gateway().documents)


@bp.get(ROOT + "/<document_id>")
def get(document_id):
    """One document, with its extracted text in `text` (`?text=false`: metadata only).
    ---
    tags: [documents]
    parameters:
      - {name: text, in: query, schema: {type: boolean, default: true}}
    responses:
      200:
        description: The document.
        content:
          application/json:
            schema: Document
    """
    text = request.args.get("text", "true").lower() not in ("false", "0", "no")
    return current_gateway().documents.get(owner(), document_id, text=text)


@bp.delete(ROOT + "/<document_id>")
def delete(document_id):
    """Delete a document (its text and its chunks).
    ---
    tags: [documents]
    responses:
      204: {description: Deleted.}
    """
    gateway = current_gateway()
    gateway.documents.delete(authenticate(gateway).name, document_id)
    return "", 204
