"""SQLModel's heroes and teams, on fastapi-dbsession: sync routes with ``sqlmodel.Session``."""

import os
from typing import Annotated

import sqlmodel
from fastapi import Depends, FastAPI, HTTPException, Query
from sqlalchemy.orm import selectinload
from sqlmodel import Field, Relationship, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from fastapi_dbsession import DatabaseSessionManager


# --8<-- [start:models]
class TeamBase(SQLModel):
    name: str = Field(index=True, max_length=50)
    headquarters: str = Field(max_length=100)


class Team(TeamBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    heroes: list["Hero"] = Relationship(back_populates="team")


class TeamCreate(TeamBase):
    pass


class TeamPublic(TeamBase):
    id: int


class HeroBase(SQLModel):
    name: str = Field(index=True, max_length=50)
    secret_name: str = Field(max_length=50)
    age: int | None = Field(default=None, index=True)
    team_id: int | None = Field(default=None, foreign_key="team.id")


class Hero(HeroBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    team: Team | None = Relationship(back_populates="heroes")


class HeroCreate(HeroBase):
    pass


class HeroPublic(HeroBase):
    id: int


class HeroUpdate(SQLModel):
    name: str | None = None
    secret_name: str | None = None
    age: int | None = None
    team_id: int | None = None


class HeroPublicWithTeam(HeroPublic):
    team: TeamPublic | None = None


class TeamPublicWithHeroes(TeamPublic):
    heroes: list[HeroPublic] = []


# --8<-- [end:models]


# --8<-- [start:wiring]
db = DatabaseSessionManager(
    os.environ.get("DATABASE_URL", "sqlite:///./heroes.db"),  # the async twin is derived
    session_class=sqlmodel.Session,  # request sessions have .exec()
    async_session_class=AsyncSession,  # sqlmodel.ext.asyncio.session.AsyncSession
)
get_session = db.session  # the name the tutorial's tests override: dependency_overrides work
SessionDep = Annotated[sqlmodel.Session, Depends(get_session)]
AsyncSessionDep = Annotated[AsyncSession, Depends(db.async_session)]
app = FastAPI(lifespan=db.lifespan)  # instead of @app.on_event("startup"); tables: Alembic
# --8<-- [end:wiring]


# --8<-- [start:heroes]
@app.post("/heroes/", response_model=HeroPublic)
def create_hero(hero: HeroCreate, session: SessionDep) -> Hero:
    db_hero = Hero.model_validate(hero)
    session.add(db_hero)
    session.flush()  # the id; the request commits before the response, no commit()/refresh()
    return db_hero


@app.get("/heroes/", response_model=list[HeroPublic])
def read_heroes(
    session: SessionDep, offset: int = 0, limit: Annotated[int, Query(le=100)] = 100
) -> list[Hero]:
    return list(session.exec(select(Hero).offset(offset).limit(limit)))


@app.get("/heroes/{hero_id}", response_model=HeroPublicWithTeam)
def read_hero(hero_id: int, session: SessionDep) -> Hero:
    hero = session.get(Hero, hero_id)
    if not hero:
        raise HTTPException(status_code=404, detail="Hero not found")
    return hero  # hero.team loads lazily while the response is built: the session is open


@app.patch("/heroes/{hero_id}", response_model=HeroPublic)
def update_hero(hero_id: int, hero: HeroUpdate, session: SessionDep) -> Hero:
    db_hero = session.get(Hero, hero_id)
    if not db_hero:
        raise HTTPException(status_code=404, detail="Hero not found")
    db_hero.sqlmodel_update(hero.model_dump(exclude_unset=True))
    return db_hero


@app.delete("/heroes/{hero_id}")
def delete_hero(hero_id: int, session: SessionDep) -> dict[str, bool]:
    hero = session.get(Hero, hero_id)
    if not hero:
        raise HTTPException(status_code=404, detail="Hero not found")
    session.delete(hero)
    return {"ok": True}


# --8<-- [end:heroes]


# --8<-- [start:teams]
@app.post("/teams/", response_model=TeamPublic)
def create_team(team: TeamCreate, session: SessionDep) -> Team:
    db_team = Team.model_validate(team)
    session.add(db_team)
    session.flush()
    return db_team


@app.get("/teams/{team_id}", response_model=TeamPublicWithHeroes)
def read_team(team_id: int, session: SessionDep) -> Team:
    team = session.get(Team, team_id)
    if not team:
        raise HTTPException(status_code=404, detail="Team not found")
    return team


# --8<-- [end:teams]


# --8<-- [start:async]
@app.post("/async/heroes/", response_model=HeroPublic)
async def acreate_hero(hero: HeroCreate, session: AsyncSessionDep) -> Hero:
    db_hero = Hero.model_validate(hero)
    session.add(db_hero)
    await session.flush()
    return db_hero  # async sessions default to expire_on_commit=False


@app.get("/async/heroes/{hero_id}", response_model=HeroPublicWithTeam)
async def aread_hero(hero_id: int, session: AsyncSessionDep) -> Hero:
    # no lazy loading under asyncio: load what the response needs up front
    statement = select(Hero).where(Hero.id == hero_id).options(selectinload(Hero.team))
    hero = (await session.exec(statement)).first()
    if not hero:
        raise HTTPException(status_code=404, detail="Hero not found")
    return hero


# --8<-- [end:async]
