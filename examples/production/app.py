"""Production wiring: typed settings, health probes, pool status, the startup check.

Needs the [settings] extra. Run it with DATABASE_URL set (any URL the library takes), e.g.
``DATABASE_URL=postgresql+psycopg://app@db/app uvicorn examples.production.app:app``.
"""

from dataclasses import asdict

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager, DatabaseSettings

# --8<-- [start:manager]
# DATABASE_URL, DATABASE_PASSWORD, DATABASE_POOL_SIZE, ... from the environment or .env
settings = DatabaseSettings()
db = DatabaseSessionManager.from_settings(
    settings,
    startup_retries=5,  # the database may start after the app (compose, Kubernetes)
    startup_timeout=3.0,  # each attempt gives up after 3 s, even on a frozen server
    pool_saturation_warning=0.8,  # WARNING once a minute when 80 % of the pool is out
)
# --8<-- [end:manager]

# --8<-- [start:health]
app = FastAPI(lifespan=db.lifespan)
app.include_router(db.health_router(prefix="/health", timeout=2.0))  # /health/live, /ready
# --8<-- [end:health]


@app.get("/answer")
def answer(session: Session = Depends(db.session)) -> int:
    return int(session.execute(text("SELECT 42")).scalar_one())


# --8<-- [start:pool]
@app.get("/internal/pool")
def pool() -> dict[str, dict[str, object]]:
    """Pool figures for dashboards: size, checked out, overflow, capacity, waiting."""
    return {
        side: {**asdict(status), "saturation": status.saturation}
        for side, status in db.pool_status().items()
    }


# --8<-- [end:pool]
