"""The heroes and teams app's tests, as a user writes them."""

from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from app import Hero


# --8<-- [start:tests]
def test_create_and_read_hero_with_team(client: TestClient) -> None:
    team = client.post("/teams/", json={"name": "Preventers", "headquarters": "Sharp Tower"})
    assert team.status_code == 200, team.text
    hero = client.post(
        "/heroes/",
        json={"name": "Deadpond", "secret_name": "Dive Wilson", "team_id": team.json()["id"]},
    )
    assert hero.status_code == 200, hero.text
    read = client.get(f"/heroes/{hero.json()['id']}")
    assert read.json()["team"]["name"] == "Preventers"
    heroes = client.get(f"/teams/{team.json()['id']}").json()["heroes"]
    assert [h["name"] for h in heroes] == ["Deadpond"]


def test_update_and_delete(client: TestClient) -> None:
    hero_id = client.post("/heroes/", json={"name": "Rusty-Man", "secret_name": "Tommy"}).json()[
        "id"
    ]
    patched = client.patch(f"/heroes/{hero_id}", json={"age": 48})
    assert patched.json()["age"] == 48
    assert client.delete(f"/heroes/{hero_id}").json() == {"ok": True}
    assert client.get(f"/heroes/{hero_id}").status_code == 404
    assert client.delete(f"/heroes/{hero_id}").status_code == 404


def test_async_routes_with_sqlmodels_async_session(client: TestClient) -> None:
    created = client.post("/async/heroes/", json={"name": "Spider-Boy", "secret_name": "Pedro"})
    assert created.status_code == 200, created.text
    read = client.get(f"/async/heroes/{created.json()['id']}")
    assert read.json()["name"] == "Spider-Boy"
    assert read.json()["team"] is None


def test_nothing_left_from_the_other_tests(client: TestClient) -> None:
    assert client.get("/heroes/").json() == []  # every test's commits were rolled back


def test_in_memory_engine_per_test(memory_client: TestClient) -> None:
    assert memory_client.post("/heroes/", json={"name": "A", "secret_name": "a"}).status_code == 200
    assert len(memory_client.get("/heroes/").json()) == 1


def test_with_dependency_overrides(override_client: TestClient, session: Session) -> None:
    response = override_client.post("/heroes/", json={"name": "Deadpond", "secret_name": "Dive"})
    assert response.status_code == 200
    assert session.exec(select(func.count()).select_from(Hero)).one() == 1


# --8<-- [end:tests]
