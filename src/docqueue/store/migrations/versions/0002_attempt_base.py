"""attempts before the last manual retry

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 05:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.add_column(
        "jobs", sa.Column("attempt_base", sa.Integer(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("attempt_base")
