"""scrubs: each archived file's last verification on each drive, and each drive's pass

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
    # No row for any file yet: every file counts as never verified, and the first scrubs
    # of each drive read those first.
    op.create_table('file_checks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('storage_id', sa.String(length=36), nullable=False),
    sa.Column('checked_at', sa.DateTime(), nullable=True),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('result', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('image_id', 'storage_id', name='uq_file_checks_image_storage'),
    )
    with op.batch_alter_table('file_checks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_file_checks_storage_id'), ['storage_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_file_checks_result'), ['result'], unique=False)
    with op.batch_alter_table('storage_roots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scrub_seq', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('scrub_pass_seq', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('scrub_passes', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('last_scrub_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('storage_roots', schema=None) as batch_op:
        for name in ('last_scrub_at', 'scrub_passes', 'scrub_pass_seq', 'scrub_seq'):
            batch_op.drop_column(name)
    with op.batch_alter_table('file_checks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_file_checks_result'))
        batch_op.drop_index(batch_op.f('ix_file_checks_storage_id'))
    op.drop_table('file_checks')
