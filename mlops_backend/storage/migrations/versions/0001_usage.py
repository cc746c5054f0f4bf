"""usage: counters per key and model

Databases from before the migrations already have this table (made by create_all); it is left as it is.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("usage"):
        return
    op.create_table(
        "usage",
        sa.Column("key_name", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        *(sa.Column(field, sa.BigInteger, nullable=False, default=0)
          for field in ("requests", "prompt_tokens", "completion_tokens", "errors")),
    )


def downgrade() -> None:
    op.drop_table("usage")
