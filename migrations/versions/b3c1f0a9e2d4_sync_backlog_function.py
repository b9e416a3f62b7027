"""sync backlog counts and the schema version for operations, under row-level security
(PostgreSQL only)

The metrics gauges need two numbers over every user: sync runs queued or running, and files
waiting to sync. The app role sees one user's rows at a time (RLS), so this revision adds
``drivesync_sync_backlog()``, a ``SECURITY DEFINER`` function that returns those two counts and
nothing else. It adds no policy and lifts none: it walks the users, scoping itself to each in
turn exactly as the app does (``set_config('app.user_id', …, true)``), counts on the
``(owner, status)`` indexes, and restores the caller's scope before it returns.

``/readyz`` checks that migrations are at head, but the app role may not read
``alembic_version`` (``db-grant`` revokes it): ``drivesync_schema_version()`` returns the
version rows, read-only, and nothing else.

Revision ID: b3c1f0a9e2d4
Revises: c3a9d5e7f1b2
Create Date: 2026-12-04 07:10:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'b3c1f0a9e2d4'
down_revision = 'c3a9d5e7f1b2'
branch_labels = None
depends_on = None


def _postgresql():
    return op.get_context().dialect.name == 'postgresql'


def upgrade():
    if not _postgresql():
        return
    op.execute(
        """
        CREATE FUNCTION drivesync_sync_backlog(OUT active_runs bigint, OUT due_files bigint)
        LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
        DECLARE
            caller text := coalesce(current_setting('app.user_id', true), '');
            uid integer;
            n bigint;
        BEGIN
            active_runs := 0;
            due_files := 0;
            FOR uid IN SELECT id FROM users LOOP
                PERFORM set_config('app.user_id', uid::text, true);
                SELECT count(*) INTO n FROM sync_runs
                 WHERE user_id = uid AND status IN ('queued', 'running');
                active_runs := active_runs + n;
                SELECT count(*) INTO n FROM files
                 WHERE owner_id = uid AND onedrive_sync_status IN ('not_synced', 'error');
                due_files := due_files + n;
            END LOOP;
            PERFORM set_config('app.user_id', caller, true);
        END
        $$
        """
    )


    op.execute(
        """
        CREATE FUNCTION drivesync_schema_version() RETURNS SETOF text
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$ SELECT version_num::text FROM alembic_version $$
        """
    )


def downgrade():
    if not _postgresql():
        return
    op.execute('DROP FUNCTION IF EXISTS drivesync_schema_version()')
    op.execute('DROP FUNCTION IF EXISTS drivesync_sync_backlog()')
