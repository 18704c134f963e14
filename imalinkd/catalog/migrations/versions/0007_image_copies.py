"""backup archives: verified copies of each file on other drives, each root's drive

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No row yet: every archived file counts one copy (its home root) until a backup or a
    # replication adds another.
    op.create_table('image_copies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('storage_id', sa.String(length=36), nullable=False),
    sa.Column('verified_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('image_id', 'storage_id', name='uq_image_copies_image_storage'),
    )
    with op.batch_alter_table('image_copies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_copies_storage_id'), ['storage_id'], unique=False)
    with op.batch_alter_table('storage_roots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device_key', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('storage_roots', schema=None) as batch_op:
        batch_op.drop_column('device_key')
    with op.batch_alter_table('image_copies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_copies_storage_id'))
    op.drop_table('image_copies')
