"""row-level security on the per-user tables (PostgreSQL only)

Defence in depth behind the service layer's own scoping, mirroring the seed's RLS matrix: every
row of integrations, oauth_tokens, files and sync_runs is visible and writable only while the
transaction's ``app.user_id`` (set by ``drivesync.scope`` with ``set_config(..., true)``) names
its owner. Unset or empty means no rows at all (fail closed). ``FORCE`` subjects the table owner
to the policies too, so only a superuser or a BYPASSRLS role sees across users; the app role is
neither. A later data migration that must touch every user's rows, running as the owner, has to
``ALTER TABLE … NO FORCE ROW LEVEL SECURITY`` inside its own transaction (DDL is transactional in
PostgreSQL) and restore ``FORCE`` before it ends.

``users`` stays without RLS: sign-in looks a user up by e-mail before anyone is in scope.
Foreign-key cascades (deleting a user) run as the table owner without FORCE, so they still reach
every row. SQLite has no equivalent: this revision is a no-op there.

Revision ID: 7c41e9a2d3f5
Revises: d6e5214c9b01
Create Date: 2026-11-27 10:00:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '7c41e9a2d3f5'
down_revision = 'd6e5214c9b01'
branch_labels = None
depends_on = None

# table -> the column naming the user a row belongs to
OWNER_COLUMNS = {
    'integrations': 'user_id',
    'oauth_tokens': 'user_id',
    'files': 'owner_id',
    'sync_runs': 'user_id',
}
# NULLIF: an unset or reset setting reads as '' (not NULL), and ''::int would raise.
CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::int"


def _postgresql():
    # The context's dialect also answers in offline mode (`flask db upgrade --sql`).
    return op.get_context().dialect.name == 'postgresql'


def upgrade():
    if not _postgresql():
        return
    for table, column in OWNER_COLUMNS.items():
        op.execute(f'ALTER TABLE {table} ENABLE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE {table} FORCE ROW LEVEL SECURITY')
        # FOR ALL: SELECT, INSERT, UPDATE and DELETE; USING filters the rows a statement
        # sees, WITH CHECK refuses new or changed rows that would belong to someone else.
        op.execute(
            f'CREATE POLICY {table}_owner ON {table} AS PERMISSIVE FOR ALL TO PUBLIC '
            f'USING ({column} = {CURRENT_USER}) '
            f'WITH CHECK ({column} = {CURRENT_USER})'
        )


def downgrade():
    if not _postgresql():
        return
    for table in OWNER_COLUMNS:
        op.execute(f'DROP POLICY IF EXISTS {table}_owner ON {table}')
        op.execute(f'ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE {table} DISABLE ROW LEVEL SECURITY')
