"""Rollback rules: commit on some exceptions, roll back on others (Spring's rules)."""

import os

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fastapi_dbsession import CURRENT_SESSION, DatabaseSessionManager

db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"))


class Base(DeclarativeBase):
    pass


class PaymentAttempt(Base):
    __tablename__ = "payment_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))


# --8<-- [start:rules]
class BusinessError(Exception):
    """A refusal the caller handles; the work done so far is worth keeping."""


class PaymentDeclined(BusinessError):
    """...except this one: nothing of a declined payment may stay."""


@db.transactional(no_rollback_on=(BusinessError,), rollback_on=(PaymentDeclined,))
def charge(customer: str, outcome: str, session: Session = CURRENT_SESSION) -> None:
    session.add(PaymentAttempt(customer=customer))  # keep a trace of every attempt
    if outcome == "limit-reached":
        raise BusinessError("daily limit reached")  # commits the attempt, then raises
    if outcome == "declined":
        raise PaymentDeclined("card declined")  # the closer rule wins: rolls back


# --8<-- [end:rules]
