"""change detection on OneDrive: delta cursor, the folder's mirror, subscriptions, imports

Files gain three states: ``remote_changed`` (OneDrive has a newer version), ``remote_deleted``
(deleted, or moved out of the sync folder, in OneDrive) and ``local_only`` (the user chose to
keep it only in the library). Integrations gain the delta cursor and its schedule (``delta_due_at``: NULL when no check is
scheduled; every active connection is due at once after this upgrade), the count of
untracked files in the folder and the remote-deletion policy (ask | upload | keep). Sync runs
store the conflict decision they carry out (``resolve``), so a run queued again keeps it. Export
jobs gain ``started_at``, ``heartbeat_at``, ``enqueued_at`` and ``requeues``: the scheduler
recovers an export whose message or worker is gone, as it does runs and imports.

New tables, each under row-level security like the others (``user_id = app.user_id``):
``remote_items`` (the folder as the last complete delta left it), ``remote_item_changes`` (a
check's pages, staged until the last one arrives), ``graph_subscriptions`` (change-notification
subscriptions; the ``clientState`` vault-encrypted) and ``import_jobs`` (background imports).

PostgreSQL: ``drivesync_due_users`` gains three branches (a delta check due, a subscription to
renew, an import job whose message or worker is gone), its signature unchanged; its twin is
``drivesync.services.scheduler.DUE_USERS_SQL``. ``graph_subscriptions`` and ``import_jobs`` get
the scheduler alternative of revision c3a9d5e7f1b2 in their USING clause.
``drivesync_subscription_owner(subscription_id)`` returns the user id owning a subscription and
nothing else: a notification arrives with no user signed in, and the endpoint then checks its
``clientState`` inside that user's scope.

Revision ID: e4f2a1c9d7b3
Revises: b3c1f0a9e2d4
Create Date: 2026-12-04 09:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e4f2a1c9d7b3'
down_revision = 'b3c1f0a9e2d4'
branch_labels = None
depends_on = None

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::int"
OLD_STATUSES = ('not_synced', 'syncing', 'synced', 'error', 'conflict')
NEW_STATUSES = OLD_STATUSES + ('remote_changed', 'remote_deleted', 'local_only')
NEW_TABLES = ('remote_items', 'remote_item_changes', 'graph_subscriptions', 'import_jobs')
SCHEDULER_VISIBLE = ('graph_subscriptions', 'import_jobs')
# export_jobs (revision 9c7c8e2b1ff1) gets the scheduler alternative too, for its recovery.

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
UNION
SELECT i.user_id FROM integrations i
 WHERE i.delta_due_at <= p_now
   AND i.status = 'active' AND i.paused_at IS NULL
UNION
SELECT s.user_id FROM graph_subscriptions s WHERE s.renew_at <= p_now
UNION
SELECT j.user_id FROM import_jobs j
 WHERE (j.status = 'queued' AND COALESCE(j.enqueued_at, j.created_at) < p_requeue)
    OR (j.status = 'running' AND COALESCE(j.heartbeat_at, j.started_at, j.created_at) < p_stale)
UNION
SELECT e.user_id FROM export_jobs e
 WHERE (e.status = 'queued' AND COALESCE(e.enqueued_at, e.created_at) < p_requeue)
    OR (e.status = 'running' AND COALESCE(e.heartbeat_at, e.started_at, e.created_at) < p_stale)
"""
SIGNATURE = ('p_now timestamptz, p_stale timestamptz, p_requeue timestamptz, '
             'p_keepalive timestamptz, p_keepalive_retry timestamptz, p_notice timestamptz')


def _postgresql():
    return op.get_context().dialect.name == 'postgresql'


def _quote(name):
    return name.replace("'", "''")


def _in(column, values):
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _due_users_function(sql):
    return (
        f'CREATE OR REPLACE FUNCTION drivesync_due_users({SIGNATURE}) '
        'RETURNS SETOF integer LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT '
        'AS $fn$ BEGIN '
        "PERFORM set_config('app.scheduler', 'on', true); "
        f'RETURN QUERY {sql}; '
        "PERFORM set_config('app.scheduler', '', true); "
        'END $fn$'
    )


def upgrade():
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_files_sync_status'), type_='check')
        batch_op.create_check_constraint('sync_status', _in('onedrive_sync_status', NEW_STATUSES))

    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resolve', sa.String(length=16), nullable=True))
        batch_op.create_check_constraint('resolve', "resolve IS NULL OR resolve IN ('keep_both', 'replace')")

    with op.batch_alter_table('export_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('started_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('requeues', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index('idx_export_jobs_status', ['status'], unique=False)

    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delta_link', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('delta_checked_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('delta_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('delta_error', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('delta_failures', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('remote_new_count', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('remote_policy', sa.String(length=16), server_default='ask', nullable=False))
        batch_op.create_check_constraint('remote_policy', "remote_policy IN ('ask', 'upload', 'keep')")
        batch_op.create_index('idx_integrations_delta_due', ['delta_due_at'], unique=False)

    op.create_table('remote_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.String(length=128), nullable=False),
    sa.Column('parent_id', sa.String(length=128), nullable=True),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('is_folder', sa.Boolean(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('etag', sa.String(length=255), nullable=True),
    sa.Column('ctag', sa.String(length=255), nullable=True),
    sa.Column('quick_xor_hash', sa.String(length=40), nullable=True),
    sa.Column('modified_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], name=op.f('fk_remote_items_integration_id_integrations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_remote_items_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_remote_items')),
    sa.UniqueConstraint('integration_id', 'item_id', name='uq_remote_items_integration_item')
    )
    with op.batch_alter_table('remote_items', schema=None) as batch_op:
        batch_op.create_index('idx_remote_items_user', ['user_id'], unique=False)

    op.create_table('remote_item_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.String(length=128), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('parent_id', sa.String(length=128), nullable=True),
    sa.Column('name', sa.String(length=255), nullable=True),
    sa.Column('is_folder', sa.Boolean(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('etag', sa.String(length=255), nullable=True),
    sa.Column('ctag', sa.String(length=255), nullable=True),
    sa.Column('quick_xor_hash', sa.String(length=40), nullable=True),
    sa.Column('modified_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], name=op.f('fk_remote_item_changes_integration_id_integrations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_remote_item_changes_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_remote_item_changes')),
    sa.UniqueConstraint('integration_id', 'item_id', name='uq_remote_item_changes_integration_item')
    )
    with op.batch_alter_table('remote_item_changes', schema=None) as batch_op:
        batch_op.create_index('idx_remote_item_changes_user', ['user_id'], unique=False)

    op.create_table('graph_subscriptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('subscription_id', sa.String(length=128), nullable=False),
    sa.Column('resource', sa.String(length=400), nullable=False),
    sa.Column('notification_url', sa.String(length=2048), nullable=False),
    sa.Column('client_state_encrypted', sa.Text(), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('renew_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('renewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_notified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], name=op.f('fk_graph_subscriptions_integration_id_integrations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_graph_subscriptions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_graph_subscriptions')),
    sa.UniqueConstraint('integration_id', name=op.f('uq_graph_subscriptions_integration_id')),
    sa.UniqueConstraint('subscription_id', name=op.f('uq_graph_subscriptions_subscription_id'))
    )
    with op.batch_alter_table('graph_subscriptions', schema=None) as batch_op:
        batch_op.create_index('idx_graph_subscriptions_renew', ['renew_at'], unique=False)
        batch_op.create_index('idx_graph_subscriptions_user', ['user_id'], unique=False)

    op.create_table('import_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('item_id', sa.String(length=128), nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('bytes_done', sa.BigInteger(), nullable=False),
    sa.Column('error', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('requeues', sa.Integer(), server_default='0', nullable=False),
    sa.CheckConstraint("kind IN ('new', 'version')", name=op.f('ck_import_jobs_kind')),
    sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name=op.f('ck_import_jobs_status')),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_import_jobs_file_id_files'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_import_jobs_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_import_jobs'))
    )
    with op.batch_alter_table('import_jobs', schema=None) as batch_op:
        batch_op.create_index('idx_import_jobs_user_status', ['user_id', 'status'], unique=False)
        batch_op.create_index('idx_import_jobs_status', ['status'], unique=False)

    # Every existing connection gets its first check (the initial enumeration) at the next tick.
    # NULL means no check is scheduled; connecting schedules one. Under FORCEd row-level
    # security even the owner sees no rows outside a user scope: lift FORCE for this one
    # statement, inside this migration's transaction.
    if _postgresql():
        op.execute('ALTER TABLE integrations NO FORCE ROW LEVEL SECURITY')
    op.execute("UPDATE integrations SET delta_due_at = CURRENT_TIMESTAMP WHERE status = 'active'")
    if not _postgresql():
        return
    op.execute('ALTER TABLE integrations FORCE ROW LEVEL SECURITY')
    owner = op.get_bind().execute(sa.text('SELECT current_user')).scalar_one()
    scheduler = f"(current_user = '{_quote(owner)}' AND current_setting('app.scheduler', true) = 'on')"
    for table in NEW_TABLES:
        op.execute(f'ALTER TABLE {table} ENABLE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE {table} FORCE ROW LEVEL SECURITY')
        using = f'user_id = {CURRENT_USER}'
        if table in SCHEDULER_VISIBLE:
            using = f'{using} OR {scheduler}'
        op.execute(
            f'CREATE POLICY {table}_owner ON {table} AS PERMISSIVE FOR ALL TO PUBLIC '
            f'USING ({using}) WITH CHECK (user_id = {CURRENT_USER})'
        )
    op.execute(
        f"ALTER POLICY export_jobs_owner ON export_jobs USING (user_id = {CURRENT_USER} OR {scheduler})"
    )
    op.execute(_due_users_function(DUE_USERS_SQL))
    op.execute(
        'CREATE FUNCTION drivesync_subscription_owner(p_subscription_id text) '
        'RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT '
        'AS $fn$ DECLARE owner_id integer; BEGIN '
        "PERFORM set_config('app.scheduler', 'on', true); "
        'SELECT s.user_id INTO owner_id FROM graph_subscriptions s '
        ' WHERE s.subscription_id = p_subscription_id; '
        "PERFORM set_config('app.scheduler', '', true); "
        'RETURN owner_id; '
        'END $fn$'
    )


def downgrade():
    if _postgresql():
        op.execute('DROP FUNCTION IF EXISTS drivesync_subscription_owner(text)')
        previous = DUE_USERS_SQL.split('UNION\nSELECT i.user_id FROM integrations i\n WHERE i.delta_due_at')[0]
        op.execute(_due_users_function(previous))
    for table in reversed(NEW_TABLES):
        op.drop_table(table)
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.drop_index('idx_integrations_delta_due')
        batch_op.drop_constraint(op.f('ck_integrations_remote_policy'), type_='check')
        for column in ('remote_policy', 'remote_new_count', 'delta_failures', 'delta_error',
                       'delta_due_at', 'delta_checked_at', 'delta_link'):
            batch_op.drop_column(column)
    if _postgresql():
        op.execute(f'ALTER POLICY export_jobs_owner ON export_jobs USING (user_id = {CURRENT_USER})')
    with op.batch_alter_table('export_jobs', schema=None) as batch_op:
        batch_op.drop_index('idx_export_jobs_status')
        for column in ('requeues', 'enqueued_at', 'heartbeat_at', 'started_at'):
            batch_op.drop_column(column)
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_sync_runs_resolve'), type_='check')
        batch_op.drop_column('resolve')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_files_sync_status'), type_='check')
        batch_op.create_check_constraint('sync_status', _in('onedrive_sync_status', OLD_STATUSES))
