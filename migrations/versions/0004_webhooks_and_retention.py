"""webhooks and retention

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 10:40:00
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # RESERVED: filled in with the tables of webhooks and retention.
    return None


def downgrade() -> None:
    return None
