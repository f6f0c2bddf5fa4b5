"""Two databases, one lifespan: both checked at startup, both disposed at shutdown."""

import os

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager, compose_lifespans

# --8<-- [start:compose]
db = DatabaseSessionManager(os.environ["DATABASE_URL"])  # users
orders_db = DatabaseSessionManager(os.environ["ORDERS_DATABASE_URL"])

app = FastAPI(lifespan=compose_lifespans(db.lifespan, orders_db.lifespan))
# --8<-- [end:compose]


@app.get("/counts")
def counts(
    users: Session = Depends(db.session), orders: Session = Depends(orders_db.session)
) -> list[int]:
    return [
        int(users.execute(text("SELECT 1")).scalar_one()),
        int(orders.execute(text("SELECT 2")).scalar_one()),
    ]
