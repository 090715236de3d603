"""input files

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 10:40:00
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # RESERVED: filled in with the tables of input files.
    return None


def downgrade() -> None:
    return None
