"""api keys and workers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 10:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None



def upgrade() -> None:
    op.create_table(
        'api_keys',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('admin', sa.Boolean(), nullable=False),
        sa.Column('key_hash', sa.String(length=64), nullable=False),
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    )
    op.create_index('ix_api_keys_key_hash', 'api_keys', ['key_hash'], unique=True)

    op.create_table(
        'webhook_secrets',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('secret', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['owner'], ['api_keys.id'], name=op.f('fk_webhook_secrets_owner_api_keys'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_secrets')),
    )
    op.create_index('ix_webhook_secrets_owner', 'webhook_secrets', ['owner', 'created_at'], unique=False)

    op.create_table(
        'workers',
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('stage', sa.String(length=160), nullable=False),
        sa.Column('queue', sa.String(length=160), nullable=False),
        sa.Column('device', sa.String(length=32), nullable=False),
        sa.Column('engine', sa.String(length=128), nullable=False),
        sa.Column('model', sa.String(length=512), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_heartbeat', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('batch_size', sa.Integer(), nullable=False),
        sa.Column('batches', sa.Integer(), nullable=False),
        sa.Column('jobs_done', sa.Integer(), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_workers')),
    )
    op.create_index('ix_workers_last_heartbeat', 'workers', ['last_heartbeat'], unique=False)
    op.create_index('ix_stage_runs_finished', 'stage_runs', ['finished_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_stage_runs_finished', table_name='stage_runs')
    op.drop_index('ix_workers_last_heartbeat', table_name='workers')
    op.drop_table('workers')
    op.drop_index('ix_webhook_secrets_owner', table_name='webhook_secrets')
    op.drop_table('webhook_secrets')
    op.drop_index('ix_api_keys_key_hash', table_name='api_keys')
    op.drop_table('api_keys')
