"""Configuration: every constructor option, with the values a production app might pick."""

import os

from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager

# --8<-- [start:options]
db = DatabaseSessionManager(
    os.environ.get("DATABASE_URL", "postgresql+psycopg://app@db.internal/app"),  # sync URL
    async_url=None,  # None: derived from the sync URL (postgresql+psycopg is both)
    engine_options={  # create_engine(...) arguments; they win over the defaults
        "pool_size": 10,
        "max_overflow": 5,
        "pool_timeout": 10,  # seconds a request may wait for a connection
        "pool_recycle": 1800,
    },
    async_engine_options=None,  # None: the same as engine_options
    session_options={"autoflush": True},  # sessionmaker(...) arguments, both sides
    async_session_options={"expire_on_commit": False},  # the async default, spelled out
    session_class=Session,  # e.g. sqlmodel.Session
    async_session_class=None,  # e.g. sqlmodel.ext.asyncio.session.AsyncSession
    commit_policy="commit",  # "commit" | "manual" | "read_only"
)
# --8<-- [end:options]
