"""After: the same endpoint on fastapi-dbsession."""

import os
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import DatabaseSessionManager


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)


# --8<-- [start:after]
db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
SessionDep = Annotated[Session, Depends(db.session)]
app = FastAPI(lifespan=db.lifespan)


@app.post("/users", status_code=201)
def create_user(email: str, session: SessionDep) -> dict[str, int]:
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise HTTPException(409, "email taken")
    user = User(email=email)
    session.add(user)
    session.flush()  # the id, without committing yet
    return {"id": user.id}  # committed before the response is sent


# --8<-- [end:after]
