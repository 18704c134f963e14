"""drop the images' single-column session_id index

Revision ID: 0003
Revises: 0002
"""
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ix_images_session_path (session_id, storage_relative_path) answers every look-up by
    # session_id as well; the second index only cost time on each insert and reindex.
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index('ix_images_session_id')


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index('ix_images_session_id', ['session_id'], unique=False)
