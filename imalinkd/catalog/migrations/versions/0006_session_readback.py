"""sessions record how their verifications re-read the copies (from-disk or
page-cache-possible)

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for sessions imported before: nothing recorded how they were re-read.
    op.add_column('import_sessions', sa.Column('readback', sa.String(length=24), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE … DROP COLUMN (SQLite 3.35+), not a batch copy: the copy drops and
    # re-creates import_sessions, and with foreign keys on that deletes every image.
    op.drop_column('import_sessions', 'readback')
