"""Metrics and traces: Prometheus figures, OpenTelemetry spans and the connection wait."""

import os

import prometheus_client
from fastapi import Depends, FastAPI
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from sqlalchemy import text
from sqlalchemy.orm import Session

from fastapi_dbsession import DatabaseSessionManager

# --8<-- [start:metrics]
db = DatabaseSessionManager(os.environ.get("DATABASE_URL", "sqlite:///./app.db"), name="shop")

db.prometheus_metrics()  # pool and query figures into prometheus_client's default registry
db.opentelemetry_metrics()  # db.client.connection.wait_time, through the global MeterProvider

# Spans for every statement: the engines do not exist yet (they are created on first use),
# and the instrumentation wraps SQLAlchemy's create_engine, which the manager calls then.
# skip_dep_check: the instrumentation's declared range stops below SQLAlchemy 2.1.
SQLAlchemyInstrumentor().instrument(skip_dep_check=True)

app = FastAPI(lifespan=db.lifespan)
app.mount("/metrics", prometheus_client.make_asgi_app())
# --8<-- [end:metrics]


@app.get("/products/{product_id}")
def read_product(product_id: int, session: Session = Depends(db.session)) -> dict[str, int]:
    session.execute(text("SELECT 1"))
    return {"id": product_id}
