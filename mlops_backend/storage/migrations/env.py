"""Alembic's entry point for the gateway's migrations: run on the connection storage.database passes
(`flask db upgrade` and the gateway's start both go through storage.database.upgrade)."""

from alembic import context

from mlops_backend.storage.database import VERSION_TABLE, create_engine
from mlops_backend.storage.tables import metadata

config = context.config


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:  # `alembic` run by hand, with sqlalchemy.url set (alembic -x or an ini of one's own)
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as own:
        run(own)
        own.commit()
