"""Query recording: a log line per request, Server-Timing, and the slow-query log."""

import logging
import os

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager, ServerTimingMiddleware

# --8<-- [start:setup]
logging.basicConfig(level=logging.INFO)  # or your own logging configuration

db = DatabaseSessionManager(
    os.environ.get("DATABASE_URL", "sqlite:///./app.db"),
    name="shop",  # the label in log lines, Server-Timing and metrics
    record_queries=True,  # count and time each request's statements
    slow_query_threshold=0.5,  # log statements of 500 ms or more, with their caller
    hold_warning_threshold=5.0,  # name requests and units holding a connection 5 s or more
)
app = FastAPI(lifespan=db.lifespan)
app.add_middleware(ServerTimingMiddleware)  # optional: the figures as a response header
# --8<-- [end:setup]


@app.get("/products/{product_id}")
def read_product(product_id: int, session: Session = Depends(db.session)) -> dict[str, int]:
    session.execute(text("SELECT 1"))
    session.execute(text("SELECT 2"))
    return {"id": product_id}
