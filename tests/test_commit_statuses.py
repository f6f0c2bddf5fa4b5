"""Which statuses of a returned (not raised) response commit: per manager and per route."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Response
from fastapi.testclient import TestClient
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fastapi_dbsession import ConfigurationError, DatabaseSessionManager
from tests.conftest import Backend
from tests.models import Item


def make_app(db: DatabaseSessionManager, route_statuses: Container[int] | None = None) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)
    route_rule = (
        []
        if route_statuses is None
        else [Depends(db.commit_policy("commit", statuses=route_statuses))]
    )

    @app.post("/sync/items", dependencies=route_rule)
    def create(
        name: str, status: int, response: Response, session: Session = Depends(db.session)
    ) -> None:
        session.add(Item(name=name))
        response.status_code = status

    @app.post("/async/items", dependencies=route_rule)
    async def acreate(
        name: str,
        status: int,
        response: Response,
        session: AsyncSession = Depends(db.async_session),
    ) -> None:
        session.add(Item(name=name))
        response.status_code = status

    @app.post("/sync/accepted", status_code=202)  # the declared status decides too
    def accept(name: str, session: Session = Depends(db.session)) -> None:
        session.add(Item(name=name))

    @app.post("/async/accepted", status_code=202)
    async def aaccept(name: str, session: AsyncSession = Depends(db.async_session)) -> None:
        session.add(Item(name=name))

    return app


def post(client: TestClient, side: str, name: str, status: int) -> int:
    response = client.post(
        f"/{side}/items", params={"name": name, "status": status}, follow_redirects=False
    )
    return response.status_code


def manager(backend: Backend, **options: Any) -> DatabaseSessionManager:
    return DatabaseSessionManager(backend.url, async_url=backend.async_url, **options)


def test_default_rule_commits_below_400_and_rolls_back_a_returned_4xx(
    backend: Backend, side: str
) -> None:
    with TestClient(make_app(manager(backend))) as client:
        assert post(client, side, "redirected", 303) == 303
        assert post(client, side, "refused", 409) == 409
    assert backend.names() == ["redirected"]


def test_manager_commit_statuses_roll_back_a_redirect(backend: Backend, side: str) -> None:
    db = manager(backend, commit_statuses=range(200, 300))
    with TestClient(make_app(db)) as client:
        assert post(client, side, "created", 201) == 201
        assert post(client, side, "redirected", 303) == 303
        assert client.post(f"/{side}/accepted", params={"name": "accepted"}).status_code == 202
    assert backend.names() == ["accepted", "created"]


def test_declared_route_status_outside_the_set_rolls_back(backend: Backend, side: str) -> None:
    db = manager(backend, commit_statuses={200, 201})
    with TestClient(make_app(db)) as client:
        assert client.post(f"/{side}/accepted", params={"name": "accepted"}).status_code == 202
    assert backend.count() == 0


def test_route_statuses_override_the_managers(backend: Backend, side: str) -> None:
    db = manager(backend, commit_statuses=range(200, 300))
    with TestClient(make_app(db, route_statuses=range(200, 400))) as client:
        assert post(client, side, "redirected", 302) == 302
        assert post(client, side, "refused", 422) == 422
    assert backend.names() == ["redirected"]


def test_route_statuses_can_commit_a_returned_4xx_deliberately(backend: Backend) -> None:
    db = manager(backend)
    with TestClient(make_app(db, route_statuses=range(200, 500))) as client:
        assert post(client, "sync", "kept", 404) == 404
    assert backend.names() == ["kept"]


@pytest.mark.parametrize(
    ("statuses", "message"),
    [
        ("2xx", "not a collection of status codes"),
        (200, "not a collection of status codes"),
        (b"200", "not a collection of status codes"),
        ({200, 999}, "999, which is not an HTTP status code"),
        ({99, 200}, "99, which is not an HTTP status code"),
        ({200, 600}, "600, which is not an HTTP status code"),
        ({200, "201"}, "'201', which is not an HTTP status code"),
    ],
)
def test_bad_statuses_are_refused(statuses: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DatabaseSessionManager("sqlite://", commit_statuses=statuses)  # type: ignore[arg-type]
    db = DatabaseSessionManager("sqlite://")
    with pytest.raises(ConfigurationError, match=message):
        db.commit_policy("commit", statuses=statuses)  # type: ignore[arg-type]


def test_a_bad_statuses_value_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigurationError) as caught:
        DatabaseSessionManager("sqlite://", commit_statuses="2xx")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "commit_statuses='2xx' is not a collection of status codes. Pass the statuses whose "
        "responses commit, e.g. commit_statuses=range(200, 400) (redirects commit too) or "
        "commit_statuses={200, 201, 204}."
    )
    with pytest.raises(ConfigurationError) as caught:
        DatabaseSessionManager("sqlite://", commit_statuses={200, 999})
    assert str(caught.value) == (
        "commit_statuses holds 999, which is not an HTTP status code (100-599)."
    )


class Below400:
    """A container that cannot be iterated: only asked whether a status is in it."""

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and status < 400


@pytest.mark.parametrize("statuses", [{100, 599}, range(100, 600), Below400()])
def test_every_http_status_and_any_container_is_accepted(statuses: object) -> None:
    DatabaseSessionManager("sqlite://", commit_statuses=statuses)  # type: ignore[arg-type]
    DatabaseSessionManager("sqlite://").commit_policy("commit", statuses=statuses)  # type: ignore[arg-type]
