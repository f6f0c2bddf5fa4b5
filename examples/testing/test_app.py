"""How a user tests an app built on fastapi-dbsession today: overrides and rollback."""

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import Book, db


def count_books(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Book)) or 0


# --8<-- [start:tests]
def test_add_book(client: TestClient, session: Session) -> None:
    response = client.post("/books", params={"title": "Dune"})

    assert response.status_code == 201
    assert session.get(Book, response.json()["id"]) is not None


def test_each_test_starts_from_an_empty_catalogue(client: TestClient, session: Session) -> None:
    assert count_books(session) == 0  # the previous test's book was rolled back
    assert client.post("/books", params={"title": "Dune"}).status_code == 201


def test_duplicate_title_is_refused(client: TestClient) -> None:
    assert client.post("/books", params={"title": "Emma"}).status_code == 201
    assert client.post("/books", params={"title": "Emma"}).status_code == 409


def test_the_apps_own_commit_stays_inside_the_test(client: TestClient, session: Session) -> None:
    book_id = client.post("/books", params={"title": "Ulysses"}).json()["id"]

    assert client.post(f"/books/{book_id}/borrow").json() == {"copies": 0}  # app commits

    assert count_books(session) == 1  # the test sees it...
    with db.engine.connect() as other_connection:  # ...nobody else does
        assert other_connection.scalar(select(func.count()).select_from(Book)) == 0


# --8<-- [end:tests]
