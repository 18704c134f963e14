"""every path a storage root was seen at, per station (the mount guard's memory)

Revision ID: 0008
Revises: 0007
"""
import socket
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('root_paths',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('storage_id', sa.String(length=36), nullable=False),
    sa.Column('station', sa.Text(), nullable=False),
    sa.Column('path', sa.LargeBinary(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(), nullable=True),
    sa.Column('last_seen_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('station', 'path', 'storage_id', name='uq_root_paths_station_path_storage'),
    )
    with op.batch_alter_table('root_paths', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_root_paths_storage_id'), ['storage_id'], unique=False)
    # The one path each root was last seen at is all an older catalog kept. Before stations
    # a catalog served one machine: this one.
    conn = op.get_bind()
    station = socket.gethostname()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = conn.execute(sa.text("SELECT storage_id, last_seen_path, first_seen_at, last_seen_at FROM storage_roots "
                                "WHERE last_seen_path IS NOT NULL")).all()
    table = sa.table('root_paths', sa.column('storage_id'), sa.column('station'), sa.column('path', sa.LargeBinary),
                     sa.column('first_seen_at'), sa.column('last_seen_at'))
    for storage_id, path, first, last in rows:
        op.execute(table.insert().values(storage_id=storage_id, station=station, path=path.encode('utf-8', 'surrogateescape'),
                                         first_seen_at=first or now, last_seen_at=last or now))


def downgrade() -> None:
    with op.batch_alter_table('root_paths', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_root_paths_storage_id'))
    op.drop_table('root_paths')
