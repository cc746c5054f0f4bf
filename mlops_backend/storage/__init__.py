"""The gateway's SQL database (DATABASE_URL): its tables, its engine, and the Alembic migrations that
create and change them. Plain SQLAlchemy Core and Alembic, no Flask."""
