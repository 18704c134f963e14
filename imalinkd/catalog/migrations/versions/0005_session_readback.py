"""sessions record how their verifications re-read the copies (from-disk or
page-cache-possible)

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for sessions imported before: nothing recorded how they were re-read.
    with op.batch_alter_table('import_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('readback', sa.String(length=24), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('import_sessions', schema=None) as batch_op:
        batch_op.drop_column('readback')
