"""Alembic environment: runs on the connection docqueue hands over, inside its transaction."""

from alembic import context
from sqlalchemy import create_engine

from docqueue.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` on the command line, for writing new revisions
    url = context.config.get_main_option("sqlalchemy.url") or "sqlite://"
    connection = create_engine(url).connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
