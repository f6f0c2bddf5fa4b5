"""Before: the hand-written pattern most FastAPI tutorials teach."""

import os
from collections.abc import Iterator

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)


# --8<-- [start:before]
# SQLite also needs connect_args={"check_same_thread": False}
engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)
app = FastAPI()


def get_db() -> Iterator[Session]:
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


@app.post("/users", status_code=201)
def create_user(email: str, db: Session = Depends(get_db)) -> dict[str, int]:
    if db.query(User).filter(User.email == email).first() is not None:
        raise HTTPException(409, "email taken")
    user = User(email=email)
    db.add(user)
    db.commit()
    db.refresh(user)
    return {"id": user.id}


# --8<-- [end:before]
