"""Every example under examples/ runs in the suite, on a real database."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Backend

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> ModuleType:
    """Import an example file as a fresh module, pointed at ``database_url``."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    name = f"example_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_quickstart(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    url = backend.url.render_as_string(hide_password=False)
    quickstart = load_example(EXAMPLES / "quickstart" / "app.py", monkeypatch, url)

    with TestClient(quickstart.app) as client:
        created = client.post("/notes", json={"title": "hello"})
        duplicate = client.post("/notes", json={"title": "hello"})
        listed = client.get("/notes")
        missing = client.get("/notes/999999")
        quickstart.Base.metadata.drop_all(quickstart.db.engine)

    assert created.status_code == 201
    assert created.json()["title"] == "hello"
    assert duplicate.status_code == 409
    assert [note["title"] for note in listed.json()] == ["hello"]
    assert missing.status_code == 404


def test_service_layer(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    url = backend.url.render_as_string(hide_password=False)
    example = load_example(EXAMPLES / "service_layer" / "app.py", monkeypatch, url)

    with TestClient(example.app) as client:
        ok = client.post("/transfers", json={"source": "ada", "target": "bob", "amount": 30})
        refused = client.post("/transfers", json={"source": "bob", "target": "ada", "amount": 99})
        accounts = client.get("/accounts").json()
        audit = client.get("/audit").json()
        example.Base.metadata.drop_all(example.db.engine)

    assert ok.status_code == 200
    assert ok.json() == {"balance": 70}
    assert refused.status_code == 409
    assert accounts == {"ada": 70, "bob": 30}  # the refused transfer left nothing behind
    assert len(audit) == 2  # ...but its audit entry (REQUIRES_NEW) survived
    assert example.OUTBOX == ["to ada: you sent 30 to bob"]  # only the committed transfer


def test_production(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    url = backend.url.render_as_string(hide_password=False)
    example = load_example(EXAMPLES / "production" / "app.py", monkeypatch, url)

    with TestClient(example.app) as client:
        ready = client.get("/health/ready")
        live = client.get("/health/live")
        answer = client.get("/answer")
        pool = client.get("/internal/pool").json()

    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    assert live.json() == {"status": "ok"}
    assert answer.json() == 42
    assert pool["sync"]["checked_out"] == 0  # the answer's connection is back in the pool
    assert pool["sync"]["waiting"] == 0
