"""How a user tests an app built on fastapi-dbsession: the plugin's fixtures."""

from collections.abc import Callable
from contextlib import AbstractContextManager

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app import Book, db


def count_books(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Book)) or 0


# --8<-- [start:tests]
def test_add_book(client: TestClient, db_session: Session) -> None:
    response = client.post("/books", params={"title": "Dune"})

    assert response.status_code == 201
    assert db_session.get(Book, response.json()["id"]) is not None


def test_each_test_starts_from_an_empty_catalogue(client: TestClient, db_session: Session) -> None:
    assert count_books(db_session) == 0  # the previous test's book was rolled back
    assert client.post("/books", params={"title": "Dune"}).status_code == 201


def test_data_made_in_the_test_is_seen_by_the_app(client: TestClient, db_session: Session) -> None:
    db_session.add(Book(title="Emma"))
    db_session.flush()

    assert client.post("/books", params={"title": "Emma"}).status_code == 409


def test_the_apps_own_commit_stays_inside_the_test(client: TestClient, db_session: Session) -> None:
    book_id = client.post("/books", params={"title": "Ulysses"}).json()["id"]

    assert client.post(f"/books/{book_id}/borrow").json() == {"copies": 0}  # app commits

    assert count_books(db_session) == 1  # the test sees it...
    outside = create_engine(db.url, poolclass=NullPool)  # ...nobody else does
    with outside.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Book)) == 0
    outside.dispose()


def test_listing_books_is_one_query(
    client: TestClient,
    db_session: Session,
    assert_max_queries: Callable[[int], AbstractContextManager[object]],
) -> None:
    db_session.add_all([Book(title=f"Book {n}") for n in range(5)])
    db_session.flush()

    with assert_max_queries(1):  # an N+1 loop in the endpoint would fail here
        assert len(client.get("/books").json()) == 5


# --8<-- [end:tests]
