"""An engine the app already builds (shared with Alembic, a CLI, Celery), handed to the manager."""

import os

from fastapi import Depends, FastAPI
from sqlalchemy import String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


# --8<-- [start:engine]
# Built once, your way (here: your own pool settings; or creator=, a cloud connector, ...)
engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///./app.db"), pool_size=3)

db = DatabaseSessionManager(engine=engine)  # used as it is; the lifespan does not dispose it
app = FastAPI(lifespan=db.lifespan)


@app.post("/jobs", status_code=201)
def create_job(name: str, session: Session = Depends(db.session)) -> dict[str, int]:
    job = Job(name=name)
    session.add(job)
    session.flush()
    return {"id": job.id}


def count_jobs() -> int:  # a CLI command on the same engine, outside any request
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


# --8<-- [end:engine]


Base.metadata.create_all(engine)
