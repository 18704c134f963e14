"""session copies remember their manifest's size, mtime and ctime

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

COLUMNS = ('manifest_size', 'manifest_mtime_ns', 'manifest_ctime_ns')


def upgrade() -> None:
    # NULL for every existing copy: the first reindex after the upgrade reads every
    # manifest once, as before, and records what it read.
    with op.batch_alter_table('session_copies', schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('session_copies', schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
