"""Persistence: tables, the engine, repository functions and Alembic migrations."""
