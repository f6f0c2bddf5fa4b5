"""Time per test: the plugin's rollback isolation vs recreating the schema for every test.

Writes two sample projects of N identical tests (an app with five tables; each test posts two
rows through TestClient and reads them back) and runs each with pytest against a fresh
PostgreSQL database, interleaved, several rounds; prints the median run time, the marginal cost
per test (the difference to a run of --small tests, so pytest start-up and database creation
cancel out) and the ratio to recreating the schema.

    .venv/bin/python benchmarks/isolation_cost.py [--tests 200] [--rounds 3] [--url URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

APP = """
import os
from fastapi import Depends, FastAPI
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from fastapi_dbsession import DatabaseSessionManager

db = DatabaseSessionManager(os.environ["BENCH_URL"])
app = FastAPI(lifespan=db.lifespan)

class Base(DeclarativeBase):
    pass

class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))

class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))

class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))

class Line(Base):
    __tablename__ = "lines"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))

class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))

@app.post("/customers")
def create(name: str, session: Session = Depends(db.session)) -> int:
    customer = Customer(name=name)
    session.add(customer)
    session.flush()
    return customer.id

@app.get("/customers")
def names(session: Session = Depends(db.session)) -> list[str]:
    return list(session.scalars(select(Customer.name).order_by(Customer.id)))
"""

TEST = """
def test_{n}(client):
    client.post("/customers", params={{"name": "a"}})
    client.post("/customers", params={{"name": "b"}})
    assert client.get("/customers").json() == ["a", "b"]
"""

ISOLATION_CONFTEST = """
import pytest
from fastapi.testclient import TestClient
from bench_app import app

@pytest.fixture(scope="session")
def client_session():
    with TestClient(app) as client:
        yield client

@pytest.fixture
def client(db_isolation, client_session):
    return client_session
"""

RECREATE_CONFTEST = """
import pytest
from fastapi.testclient import TestClient
from bench_app import Base, app, db

@pytest.fixture(scope="session")
def client_session():
    with TestClient(app) as client:
        yield client

@pytest.fixture
def client(client_session):
    Base.metadata.drop_all(db.engine)
    Base.metadata.create_all(db.engine)
    return client_session
"""

INI = """
[pytest]
dbsession_manager = bench_app:db
dbsession_metadata = bench_app:Base
dbsession_create_database = true
"""


def make_project(root: Path, conftest: str, tests: int) -> Path:
    root.mkdir()
    (root / "bench_app.py").write_text(textwrap.dedent(APP))
    (root / "conftest.py").write_text(textwrap.dedent(conftest))
    (root / "pytest.ini").write_text(textwrap.dedent(INI))
    (root / "test_many.py").write_text("".join(TEST.format(n=n) for n in range(tests)))
    return root


def run(project: Path, url: str, tests: int) -> float:
    env = {**os.environ, "BENCH_URL": url}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if f"{tests} passed" not in result.stdout:
        raise SystemExit(f"{project.name} did not pass:\n{result.stdout}\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    setups = {
        "rollback isolation (db_isolation)": ISOLATION_CONFTEST,
        "recreate schema per test": RECREATE_CONFTEST,
    }
    with tempfile.TemporaryDirectory() as tmp:
        projects = {
            (name, size): make_project(Path(tmp) / f"p{index}_{size}", conftest, size)
            for index, (name, conftest) in enumerate(setups.items())
            for size in (args.small, args.tests)
        }
        times: dict[tuple[str, int], list[float]] = {key: [] for key in projects}
        for _ in range(args.rounds):  # interleaved: A B A B ...
            for key, project in projects.items():
                times[key].append(run(project, args.url, key[1]))
    marginal = {
        name: (
            statistics.median(times[(name, args.tests)])
            - statistics.median(times[(name, args.small)])
        )
        / (args.tests - args.small)
        for name in setups
    }
    baseline = marginal["recreate schema per test"]
    print(f"{args.tests} tests, {args.rounds} rounds interleaved, PostgreSQL, medians")
    print(f"{'setup':38} {'run (s)':>8} {'ms/test':>8} {'ratio':>6}")
    for name in setups:
        whole = statistics.median(times[(name, args.tests)])
        per_test = marginal[name]
        print(f"{name:38} {whole:8.2f} {per_test * 1000:8.2f} {per_test / baseline:6.2f}")


if __name__ == "__main__":
    main()
