"""Sessions opened inside endpoints (`with Session(engine) as session:`), and what replaces them."""

import os
from typing import Annotated

import sqlmodel
from fastapi import Depends, FastAPI
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlmodel import SQLModel

from fastapi_dbsession import DatabaseSessionManager


class Base(DeclarativeBase):
    pass


class Hero(Base):
    __tablename__ = "inside_heroes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class HeroPublic(SQLModel):
    id: int
    name: str


db = DatabaseSessionManager(
    os.environ.get("DATABASE_URL", "sqlite:///./app.db"), session_class=sqlmodel.Session
)
SessionDep = Annotated[sqlmodel.Session, Depends(db.session)]
app = FastAPI(lifespan=db.lifespan)

# --8<-- [start:before]
# Before: a session opened inside the endpoint.
#
#     @app.post("/heroes/", response_model=HeroPublic)
#     def create_hero(name: str):
#         with Session(engine) as session:
#             hero = Hero(name=name)
#             session.add(hero)
#             session.commit()
#             session.refresh(hero)  # reload what commit() expired, before the session closes
#             return hero
# --8<-- [end:before]


# --8<-- [start:after]
@app.post("/heroes/", response_model=HeroPublic)
def create_hero(name: str, session: SessionDep) -> Hero:  # the request's session
    hero = Hero(name=name)
    session.add(hero)
    session.flush()  # the id; the commit comes after the response is built, before it is sent
    return hero


@app.post("/heroes/unit", response_model=HeroPublic)
def create_hero_in_a_unit(name: str) -> HeroPublic:
    with db.transaction() as session:  # a unit of its own: commits and closes at the block's end
        hero = Hero(name=name)
        session.add(hero)
        session.flush()
        return HeroPublic.model_validate(hero, from_attributes=True)  # built while it is open


@app.post("/heroes/detached", response_model=HeroPublic)
def create_hero_detached(name: str) -> Hero:  # the trap: do not write this
    with db.transaction() as session:
        hero = Hero(name=name)
        session.add(hero)
    return hero  # committed (attributes expired), closed: cannot load them -> 500


# --8<-- [end:after]


Base.metadata.create_all(db.engine)
