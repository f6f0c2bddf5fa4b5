"""The hand-written get_db() that commits in its teardown: the client gets 201, nothing saved."""

import os
from collections.abc import Iterator

from fastapi import Depends, FastAPI
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class Coupon(Base):
    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(100), unique=True)


# --8<-- [start:get_db]
engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))
SessionLocal = sessionmaker(bind=engine)


def get_db() -> Iterator[Session]:
    session = SessionLocal()
    try:
        yield session
        session.commit()  # runs AFTER the response was sent
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


app = FastAPI()


@app.post("/coupons", status_code=201)
def create_coupon(code: str, session: Session = Depends(get_db)) -> dict[str, str]:
    session.add(Coupon(code=code))  # the INSERT waits for the commit (autoflush)
    return {"code": code}  # the client gets 201 even when the commit then fails


# --8<-- [end:get_db]
