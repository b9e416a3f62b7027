"""automatic sync, per-file retries with backoff, the scheduler's due-users function

Files: ``sync_attempts``, ``next_attempt_at``, ``failure_kind`` (transient | permanent | user),
``failure_code`` and ``failing_since`` (services/failures.py). Integrations: the automatic-sync
setting, Pause, the debounced due time, the keep-alive attempt and the failure-notice episode.
Runs: when their wake-up was last sent and how often the scheduler re-queued them.

PostgreSQL only: ``drivesync_due_users(...)``, the scheduler's one cross-user query. Row-level
security (revision 7c41e9a2d3f5, FORCEd, so even the owner sees no rows outside a user scope)
hides every row from a process with no user in scope, which is what the scheduler is. The
function is ``SECURITY DEFINER``: it runs as the owner (the role running this migration) and
sets ``app.scheduler = 'on'`` around its one query only. Each table keeps its one policy; its
USING clause gains one alternative, true only for the owner role *and* only while that setting
is on: ``current_user = <owner> AND current_setting('app.scheduler', true) = 'on'``. The app
role therefore reads nothing new (it is not the owner, whatever it sets; the function returns
user ids and nothing else), and the owner gains nothing it lacked (it owns the tables and could
drop FORCE). WITH CHECK is unchanged: no write crosses users. The query text is frozen here:
``drivesync.services.scheduler.DUE_USERS_SQL`` is its twin; a change to one needs a new
migration for the other.

Revision ID: c3a9d5e7f1b2
Revises: 9c7c8e2b1ff1
Create Date: 2026-12-04 07:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c3a9d5e7f1b2'
down_revision = '9c7c8e2b1ff1'
branch_labels = None
depends_on = None

# As in revision 7c41e9a2d3f5: table -> the column naming the user a row belongs to.
OWNER_COLUMNS = {
    'integrations': 'user_id',
    'oauth_tokens': 'user_id',
    'files': 'owner_id',
    'sync_runs': 'user_id',
}
CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::int"


def _quote(name):
    return name.replace("'", "''")

DUE_USERS_SQL = """
SELECT i.user_id FROM integrations i
 WHERE i.autosync_due_at <= p_now
   AND i.status = 'active' AND i.autosync AND i.paused_at IS NULL
UNION
SELECT f.owner_id FROM files f JOIN integrations i ON i.user_id = f.owner_id
 WHERE f.next_attempt_at <= p_now AND f.onedrive_sync_status = 'error'
   AND i.status = 'active' AND i.paused_at IS NULL
UNION
SELECT f.owner_id FROM files f
 WHERE f.onedrive_sync_status = 'syncing'
   AND (f.heartbeat_at IS NULL OR f.heartbeat_at < p_stale)
UNION
SELECT r.user_id FROM sync_runs r
 WHERE (r.status = 'queued' AND COALESCE(r.enqueued_at, r.created_at) < p_requeue)
    OR (r.status = 'running' AND COALESCE(r.heartbeat_at, r.started_at, r.created_at) < p_stale)
UNION
SELECT i.user_id FROM integrations i JOIN oauth_tokens t ON t.integration_id = i.id
 WHERE t.updated_at < p_keepalive AND i.status = 'active'
   AND (i.keepalive_at IS NULL OR i.keepalive_at < p_keepalive_retry)
UNION
SELECT i.user_id FROM integrations i
 WHERE (i.status = 'needs_reauth' AND i.notice_sent_at IS NULL)
    OR (i.notice_since IS NOT NULL AND i.status = 'active' AND NOT EXISTS (
          SELECT 1 FROM files f
           WHERE f.owner_id = i.user_id AND f.onedrive_sync_status = 'error'
             AND f.failing_since < p_notice))
UNION
SELECT f.owner_id FROM files f JOIN integrations i ON i.user_id = f.owner_id
 WHERE f.failing_since < p_notice AND f.onedrive_sync_status = 'error'
   AND i.notice_sent_at IS NULL
"""


def _postgresql():
    return op.get_context().dialect.name == 'postgresql'


def upgrade():
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sync_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('failure_kind', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('failure_code', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_check_constraint(
            'failure_kind', "failure_kind IS NULL OR failure_kind IN ('transient', 'permanent', 'user')"
        )
        batch_op.create_index('idx_files_next_attempt', ['next_attempt_at'], unique=False)
        batch_op.create_index('idx_files_failing_since', ['failing_since'], unique=False)

    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('autosync', sa.Boolean(), server_default=sa.true(), nullable=False))
        batch_op.add_column(sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('autosync_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('keepalive_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('notice_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('notice_sent_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('idx_integrations_autosync_due', ['autosync_due_at'], unique=False)

    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('requeues', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index('idx_sync_runs_status', ['status'], unique=False)

    with op.batch_alter_table('oauth_tokens', schema=None) as batch_op:
        batch_op.create_index('idx_oauth_tokens_updated_at', ['updated_at'], unique=False)

    if not _postgresql():
        return
    owner = op.get_bind().execute(sa.text('SELECT current_user')).scalar_one()
    for table, column in OWNER_COLUMNS.items():
        op.execute(
            f'ALTER POLICY {table}_owner ON {table} USING ({column} = {CURRENT_USER} OR '
            f"(current_user = '{_quote(owner)}' AND current_setting('app.scheduler', true) = 'on'))"
        )
    op.execute(
        'CREATE FUNCTION drivesync_due_users('
        'p_now timestamptz, p_stale timestamptz, p_requeue timestamptz, '
        'p_keepalive timestamptz, p_keepalive_retry timestamptz, p_notice timestamptz) '
        'RETURNS SETOF integer LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT '
        "AS $fn$ BEGIN "
        # A function-level SET of a custom parameter needs a superuser on PostgreSQL 15;
        # set_config is allowed, and it is undone before the function returns.
        "PERFORM set_config('app.scheduler', 'on', true); "
        f'RETURN QUERY {DUE_USERS_SQL}; '
        "PERFORM set_config('app.scheduler', '', true); "
        'END $fn$'
    )


def downgrade():
    if _postgresql():
        op.execute('DROP FUNCTION IF EXISTS drivesync_due_users('
                   'timestamptz, timestamptz, timestamptz, timestamptz, timestamptz, timestamptz)')
        for table, column in OWNER_COLUMNS.items():
            op.execute(f'ALTER POLICY {table}_owner ON {table} USING ({column} = {CURRENT_USER})')
    with op.batch_alter_table('oauth_tokens', schema=None) as batch_op:
        batch_op.drop_index('idx_oauth_tokens_updated_at')
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_index('idx_sync_runs_status')
        batch_op.drop_column('requeues')
        batch_op.drop_column('enqueued_at')
        batch_op.drop_column('heartbeat_at')
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.drop_index('idx_integrations_autosync_due')
        for column in ('notice_sent_at', 'notice_since', 'keepalive_at', 'autosync_due_at',
                       'paused_at', 'autosync'):
            batch_op.drop_column(column)
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index('idx_files_failing_since')
        batch_op.drop_index('idx_files_next_attempt')
        batch_op.drop_constraint('ck_files_failure_kind', type_='check')
        for column in ('failing_since', 'failure_code', 'failure_kind', 'next_attempt_at',
                       'sync_attempts'):
            batch_op.drop_column(column)
