"""Units of work outside requests: a script with db.transaction() and REQUIRES_NEW."""

import os
from datetime import date

from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import CURRENT_SESSION, DatabaseSessionManager, Propagation

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))


class Base(DeclarativeBase):
    pass


class Sale(Base):
    __tablename__ = "sales"

    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[date]
    amount: Mapped[int]


class ClosedDay(Base):
    __tablename__ = "closed_days"

    day: Mapped[date] = mapped_column(primary_key=True)
    total: Mapped[int]


class JobLog(Base):
    __tablename__ = "job_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    message: Mapped[str] = mapped_column(String(200))


# --8<-- [start:script]
@db.transactional(propagation=Propagation.REQUIRES_NEW)
def log(message: str, session: Session = CURRENT_SESSION) -> None:
    """Committed at once on its own connection, whatever happens to the caller."""
    session.add(JobLog(message=message))


def close_day(day: date) -> int:
    with db.transaction(isolation_level="SERIALIZABLE") as session:
        log(f"closing {day}")  # stays in the log even if closing fails
        total = session.scalar(select(func.sum(Sale.amount)).where(Sale.day == day)) or 0
        session.add(ClosedDay(day=day, total=total))  # closing a day twice fails here
    return total  # committed when the block ended


if __name__ == "__main__":
    print(close_day(date.today()))


# --8<-- [end:script]
