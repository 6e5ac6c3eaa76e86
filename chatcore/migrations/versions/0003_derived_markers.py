"""derived markers: a conversation's newest message is looked up, not stored

Sends no longer move conversations.last_message_id nor the sender's
conversation_members.last_read_message_id (chatcore.messaging.read_up_to looks both up
from the messages), so the first column goes. The read markers stay: reading moves them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("last_message_id")


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("last_message_id", sa.BigInteger(), nullable=True))
    # What the code before this revision kept up to date on every send.
    op.execute(
        "UPDATE conversations SET last_message_id ="
        " (SELECT max(m.id) FROM messages AS m WHERE m.conversation_id = conversations.id)"
    )
    op.execute(
        "UPDATE conversation_members SET last_read_message_id = COALESCE("
        " (SELECT max(m.id) FROM messages AS m"
        " WHERE m.conversation_id = conversation_members.conversation_id"
        " AND m.sender_id = conversation_members.user_id"
        " AND m.id > conversation_members.last_read_message_id),"
        " last_read_message_id)"
    )
