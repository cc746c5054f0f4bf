"""conversations, messages, documents and their chunks, stored Responses

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_name", sa.String(64), nullable=False),
        sa.Column("title", sa.Text),
        sa.Column("model", sa.String(255)),
        sa.Column("system", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("turn_until", sa.Float),
    )
    op.create_index("conversations_by_key", "conversations", ["key_name", "created_at", "id"])
    op.create_table(
        "messages",
        sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("thinking", sa.Text),
        sa.Column("images", sa.JSON),
        sa.Column("documents", sa.JSON),
        sa.Column("model", sa.String(255)),
        sa.Column("stats", sa.JSON),
        sa.Column("interrupted", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_name", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("pages", sa.Integer),
        sa.Column("characters", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("documents_by_key", "documents", ["key_name", "created_at", "id"])
    op.create_table(
        "document_chunks",
        sa.Column("document_id", sa.String(40), sa.ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("start", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("embed_model", sa.String(255)),
        sa.Column("embedding", sa.LargeBinary),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("key_name", sa.String(64), nullable=False),
        sa.Column("previous_id", sa.String(80)),
        sa.Column("conversation", sa.String(80)),
        sa.Column("model", sa.String(255)),
        sa.Column("instructions", sa.Text),
        sa.Column("input", sa.JSON, nullable=False),
        sa.Column("output", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("responses_by_conversation", "responses", ["key_name", "conversation", "created_at"])


def downgrade() -> None:
    for table in ("responses", "document_chunks", "documents", "messages", "conversations"):
        op.drop_table(table)
