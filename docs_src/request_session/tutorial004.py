"""Which statuses commit: only 2xx for the app, 3xx too on the form route."""

import os

from fastapi import Depends, FastAPI, Response
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager


class Base(DeclarativeBase):
    pass


class Signup(Base):
    __tablename__ = "signups"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))


# --8<-- [start:statuses]
db = DatabaseSessionManager(
    os.environ.get("DATABASE_URL", "sqlite:///./app.db"),
    commit_statuses=range(200, 300),  # a redirect or a returned 4xx rolls back
)
app = FastAPI(lifespan=db.lifespan)


@app.post("/signups/check")
def check(email: str, response: Response, session: Session = Depends(db.session)) -> dict[str, str]:
    session.add(Signup(email=email))
    if "@" not in email:
        response.status_code = 422  # returned, not raised: still rolled back
    return {"email": email}


@app.post(
    "/signups",
    status_code=303,  # post/redirect/get: the redirect must commit on this route
    dependencies=[Depends(db.commit_policy("commit", statuses=range(200, 400)))],
)
def signup(email: str, response: Response, session: Session = Depends(db.session)) -> None:
    session.add(Signup(email=email))
    response.headers["Location"] = "/welcome"


# --8<-- [end:statuses]


with db.engine.begin() as connection:
    Base.metadata.create_all(connection)
