"""fastapi-sqla, async, as its README wires it: ``sqlalchemy_*`` variables, ``startup`` in
the lifespan, ``setup_middlewares``, the ``fastapi_sqla.AsyncSession`` dependency (asyncpg).

The middleware commits after the endpoint; ``pool_pre_ping=True`` and the shared pool settings
go through the environment (fastapi-sqla lower-cases the names), read at setup.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import fastapi_sqla
from fastapi import FastAPI

from apps.common import add_async_routes, settings

os.environ["SQLALCHEMY_URL"] = settings.url("asyncpg")
for option, value in settings.engine_options.items():  # it parses pool_timeout as an int
    text = f"{value:g}" if isinstance(value, float) else str(value).lower()
    os.environ[f"SQLALCHEMY_{option.upper()}"] = text


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await fastapi_sqla.startup()
    yield


app = FastAPI(lifespan=lifespan)
fastapi_sqla.setup_middlewares(app)
add_async_routes(app, fastapi_sqla.AsyncSession, commit=False)
