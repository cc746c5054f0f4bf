"""named keys in the database, token budget windows, usage per day

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "errors")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("previous_sha256", sa.String(64)),
        sa.Column("previous_until", sa.Float),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("models", sa.JSON),
        sa.Column("limits", sa.JSON),
        sa.Column("budget", sa.JSON),
        sa.Column("expires_at", sa.Float),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "key_store_version",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "usage_daily",
        sa.Column("date", sa.String(10), primary_key=True),
        sa.Column("key_name", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        *(sa.Column(field, sa.BigInteger, nullable=False, default=0) for field in USAGE_FIELDS),
    )
    op.create_table(
        "token_windows",
        sa.Column("key_name", sa.String(64), primary_key=True),
        sa.Column("window", sa.String(24), primary_key=True),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("token_windows", "usage_daily", "key_store_version", "api_keys"):
        op.drop_table(table)
