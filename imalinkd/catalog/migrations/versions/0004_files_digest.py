"""session copies remember a digest of their files' names and sizes

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for every existing copy: the first reindex after the upgrade compares every
    # file's size with the catalog's once, as before, and records the digest.
    with op.batch_alter_table('session_copies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('files_digest', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('session_copies', schema=None) as batch_op:
        batch_op.drop_column('files_digest')
