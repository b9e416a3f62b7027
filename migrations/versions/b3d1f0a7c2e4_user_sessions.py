"""user_sessions: server-side sign-in sessions that can be ended

One row per sign-in (a browser's session and its remember-me cookie). The cookie carries the
user id and a random token; only the token's SHA-256 is stored. Signing out, changing or
resetting the password and "sign out everywhere" delete rows, which ends those sessions on the
server. Row-level security as for the other per-user tables (PostgreSQL only).

Revision ID: b3d1f0a7c2e4
Revises: 7f6ce0df694d
Create Date: 2026-12-04 07:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b3d1f0a7c2e4'
down_revision = '7f6ce0df694d'
branch_labels = None
depends_on = None

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::int"


def upgrade():
    op.create_table(
        'user_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('remember', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['user_id'], ['users.id'],
            name=op.f('fk_user_sessions_user_id_users'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_user_sessions')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_user_sessions_token_hash')),
    )
    with op.batch_alter_table('user_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_sessions_user_id'), ['user_id'], unique=False)
    if op.get_context().dialect.name == 'postgresql':
        op.execute('ALTER TABLE user_sessions ENABLE ROW LEVEL SECURITY')
        op.execute('ALTER TABLE user_sessions FORCE ROW LEVEL SECURITY')
        op.execute(
            'CREATE POLICY user_sessions_owner ON user_sessions AS PERMISSIVE FOR ALL TO PUBLIC '
            f'USING (user_id = {CURRENT_USER}) WITH CHECK (user_id = {CURRENT_USER})'
        )


def downgrade():
    with op.batch_alter_table('user_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_user_sessions_user_id'))
    op.drop_table('user_sessions')
