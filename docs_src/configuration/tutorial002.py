"""Configuration from the environment: DATABASE_URL and friends, or your own prefix."""

from sqlmodel import Session as SQLModelSession

from fastapi_dbsession import DatabaseSessionManager

# --8<-- [start:from_env]
# DATABASE_URL=postgresql+psycopg://app:secret@db.internal/app
# DATABASE_POOL_SIZE=10  DATABASE_MAX_OVERFLOW=5  DATABASE_POOL_TIMEOUT=10
db = DatabaseSessionManager.from_env()

# APP_DB_URL=..., APP_DB_ASYNC_URL=..., APP_DB_COMMIT_POLICY=manual; keyword arguments win
reports_db = DatabaseSessionManager.from_env(prefix="APP_DB_", session_class=SQLModelSession)
# --8<-- [end:from_env]
