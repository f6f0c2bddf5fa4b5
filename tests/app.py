"""The app the request-session tests drive: twin routes under /sync and /async."""

import asyncio
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Response, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import create_engine, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from starlette.concurrency import run_in_threadpool

from fastapi_dbsession import DatabaseSessionManager
from tests.models import Item, ItemIn, ItemOut, Ticket


def _kill(url: object, connection_id: int) -> None:
    """Kill a MariaDB connection from outside, as a failover or a crashed proxy would."""
    admin = create_engine(url, poolclass=NullPool)  # type: ignore[call-overload]
    with admin.connect() as connection:
        connection.execute(text(f"KILL {int(connection_id)}"))
    admin.dispose()


def build_app(db: DatabaseSessionManager) -> FastAPI:
    app = FastAPI(lifespan=db.lifespan)
    background_errors: list[BaseException] = []
    app.state.background_errors = background_errors
    app.state.stream_errors = []
    app.state.kept_sessions = []
    app.state.rolled_back = []

    def _keep(session: object, side: str) -> None:
        """Hold the session past the request, as user code may (an object kept in a cache):
        garbage collection cannot return its connection, only the library's own close can;
        and record the rollback hook, which only a real rollback runs."""
        app.state.kept_sessions.append(session)
        if side == "sync":
            db.on_rollback(lambda: app.state.rolled_back.append(side))
            return

        async def rolled_back() -> None:  # awaits: a cancellation that reaches it stops it
            await asyncio.sleep(0.05)
            app.state.rolled_back.append(side)

        db.on_rollback(rolled_back)

    SessionDep = Annotated[Session, Depends(db.session)]
    AsyncSessionDep = Annotated[AsyncSession, Depends(db.async_session)]

    # -- sync ------------------------------------------------------------------------------

    def audit(session: SessionDep) -> Session:
        session.add(Item(name="audit"))
        session.flush()
        return session

    @app.post("/sync/items", status_code=201, response_model=ItemOut)
    def create(item: ItemIn, response: Response, session: SessionDep) -> Item:
        row = Item(name=item.name)
        session.add(row)
        session.flush()
        if item.status is not None:
            response.status_code = item.status
        if item.raise_status is not None:
            raise HTTPException(item.raise_status, "asked to fail")
        return row

    def audit_then_fail(kind: str, session: SessionDep) -> None:
        session.add(Item(name="audit"))
        session.flush()  # the INSERT has run: only a rollback undoes it
        if kind == "http":
            raise HTTPException(403, "refused by a dependency")
        raise RuntimeError("a dependency failed")

    @app.post("/sync/items/dependency-fails", dependencies=[Depends(audit_then_fail)])
    def dependency_fails(session: SessionDep) -> None:
        raise AssertionError("unreachable: the dependency raised")

    @app.post("/sync/items/shared", status_code=201)
    def shared(session: SessionDep, audited: Session = Depends(audit)) -> dict[str, bool]:
        session.add(Item(name="endpoint"))
        return {"same": audited is session}

    @app.post("/sync/items/audit-then-invalid", status_code=201)
    def audit_then_invalid(item: ItemIn, audited: Session = Depends(audit)) -> None:
        raise AssertionError("unreachable: the body is invalid")

    @app.post("/sync/items/bad-response", response_model=ItemOut)
    def bad_response(session: SessionDep) -> object:
        session.add(Item(name="bad-response"))
        session.flush()
        return {"id": "not a number"}

    @app.post("/sync/items/commit-fails", status_code=201)
    def commit_fails(session: SessionDep) -> dict[str, str]:
        session.add(Item(name="doomed"))
        session.flush()
        if session.bind.dialect.name == "mysql":  # type: ignore[union-attr]
            _kill(session.bind.url, session.scalar(text("SELECT CONNECTION_ID()")))  # type: ignore[union-attr,arg-type]
        else:
            session.add(Ticket(item_id=987654))  # deferred FK: fails only at COMMIT
            session.flush()
        return {"status": "the client must never see this"}

    @app.get("/sync/untouched")
    def untouched(session: SessionDep) -> dict[str, bool]:
        return {"in_transaction": session.in_transaction()}

    @app.post("/sync/items/returned-response")
    def returned_response(session: SessionDep) -> JSONResponse:
        session.add(Item(name="returned"))
        return JSONResponse({"detail": "conflict"}, status_code=409)

    @app.post("/sync/items/manual", dependencies=[Depends(db.commit_policy("manual"))])
    def manual(item: ItemIn, session: SessionDep) -> dict[str, str]:
        session.add(Item(name=item.name))
        if item.name.startswith("commit"):
            session.commit()
        session.add(Item(name=item.name + "-uncommitted"))
        session.flush()
        return {"ok": "yes"}

    @app.post("/sync/items/read-only", dependencies=[Depends(db.commit_policy("read_only"))])
    def read_only(session: SessionDep) -> dict[str, int]:
        session.add(Item(name="read-only"))
        session.flush()
        return {"count": len(session.scalars(select(Item)).all())}

    @app.post("/sync/items/background", status_code=202)
    def background(session: SessionDep, tasks: BackgroundTasks) -> dict[str, str]:
        session.add(Item(name="before-background"))

        def later() -> None:
            try:
                session.execute(text("SELECT 1"))
            except BaseException as exc:
                background_errors.append(exc)

        tasks.add_task(later)
        return {"status": "accepted"}

    @app.get("/sync/items/stream")
    def stream(session: SessionDep) -> StreamingResponse:
        def body() -> object:
            yield "start\n"
            try:
                session.scalars(select(Item)).all()
            except BaseException as exc:
                app.state.stream_errors.append(exc)
                yield "error\n"

        return StreamingResponse(body(), media_type="text/plain")  # type: ignore[arg-type]

    @app.post("/sync/items/explicit-commit", status_code=201, response_model=ItemOut)
    def explicit_commit(item: ItemIn, session: SessionDep) -> Item:
        row = Item(name=item.name)
        session.add(row)
        session.commit()  # expires row: serialization reloads it in a new transaction
        return row

    # -- async -----------------------------------------------------------------------------

    async def aaudit(session: AsyncSessionDep) -> AsyncSession:
        session.add(Item(name="audit"))
        await session.flush()
        return session

    @app.post("/async/items", status_code=201, response_model=ItemOut)
    async def acreate(item: ItemIn, response: Response, session: AsyncSessionDep) -> Item:
        row = Item(name=item.name)
        session.add(row)
        await session.flush()
        if item.status is not None:
            response.status_code = item.status
        if item.raise_status is not None:
            raise HTTPException(item.raise_status, "asked to fail")
        return row

    async def aaudit_then_fail(kind: str, session: AsyncSessionDep) -> None:
        session.add(Item(name="audit"))
        await session.flush()  # the INSERT has run: only a rollback undoes it
        if kind == "http":
            raise HTTPException(403, "refused by a dependency")
        raise RuntimeError("a dependency failed")

    @app.post("/async/items/dependency-fails", dependencies=[Depends(aaudit_then_fail)])
    async def adependency_fails(session: AsyncSessionDep) -> None:
        raise AssertionError("unreachable: the dependency raised")

    @app.post("/async/items/shared", status_code=201)
    async def ashared(
        session: AsyncSessionDep, audited: AsyncSession = Depends(aaudit)
    ) -> dict[str, bool]:
        session.add(Item(name="endpoint"))
        return {"same": audited is session}

    @app.post("/async/items/audit-then-invalid", status_code=201)
    async def aaudit_then_invalid(item: ItemIn, audited: AsyncSession = Depends(aaudit)) -> None:
        raise AssertionError("unreachable: the body is invalid")

    @app.post("/async/items/bad-response", response_model=ItemOut)
    async def abad_response(session: AsyncSessionDep) -> object:
        session.add(Item(name="bad-response"))
        await session.flush()
        return {"id": "not a number"}

    @app.post("/async/items/commit-fails", status_code=201)
    async def acommit_fails(session: AsyncSessionDep) -> dict[str, str]:
        session.add(Item(name="doomed"))
        await session.flush()
        if session.bind.dialect.name == "mysql":
            connection_id = await session.scalar(text("SELECT CONNECTION_ID()"))
            await run_in_threadpool(
                _kill, session.bind.url.set(drivername="mysql+pymysql"), connection_id
            )  # type: ignore[arg-type]
        else:
            session.add(Ticket(item_id=987654))
            await session.flush()
        return {"status": "the client must never see this"}

    @app.get("/async/untouched")
    async def auntouched(session: AsyncSessionDep) -> dict[str, bool]:
        return {"in_transaction": session.in_transaction()}

    @app.post("/async/items/returned-response")
    async def areturned_response(session: AsyncSessionDep) -> JSONResponse:
        session.add(Item(name="returned"))
        return JSONResponse({"detail": "conflict"}, status_code=409)

    @app.post("/async/items/manual", dependencies=[Depends(db.commit_policy("manual"))])
    async def amanual(item: ItemIn, session: AsyncSessionDep) -> dict[str, str]:
        session.add(Item(name=item.name))
        if item.name.startswith("commit"):
            await session.commit()
        session.add(Item(name=item.name + "-uncommitted"))
        await session.flush()
        return {"ok": "yes"}

    @app.post("/async/items/read-only", dependencies=[Depends(db.commit_policy("read_only"))])
    async def aread_only(session: AsyncSessionDep) -> dict[str, int]:
        session.add(Item(name="read-only"))
        await session.flush()
        return {"count": len((await session.scalars(select(Item))).all())}

    @app.post("/async/items/background", status_code=202)
    async def abackground(session: AsyncSessionDep, tasks: BackgroundTasks) -> dict[str, str]:
        session.add(Item(name="before-background"))

        async def later() -> None:
            try:
                await session.execute(text("SELECT 1"))
            except BaseException as exc:
                background_errors.append(exc)

        tasks.add_task(later)
        return {"status": "accepted"}

    @app.get("/async/items/stream")
    async def astream(session: AsyncSessionDep) -> StreamingResponse:
        async def body() -> object:
            yield "start\n"
            try:
                (await session.scalars(select(Item))).all()
            except BaseException as exc:
                app.state.stream_errors.append(exc)
                yield "error\n"

        return StreamingResponse(body(), media_type="text/plain")  # type: ignore[arg-type]

    @app.post("/async/items/explicit-commit", status_code=201, response_model=ItemOut)
    async def aexplicit_commit(item: ItemIn, session: AsyncSessionDep) -> Item:
        row = Item(name=item.name)
        session.add(row)
        await session.commit()  # expire_on_commit=False: no lazy load, no MissingGreenlet
        return row

    @app.get("/async/misuse/gather")
    async def agather(session: AsyncSessionDep) -> dict[str, str]:
        await asyncio.gather(session.execute(text("SELECT 1")), session.execute(text("SELECT 2")))
        return {"status": "the client must never see this"}

    @app.post("/async/items/slow", status_code=201)
    async def aslow(session: AsyncSessionDep) -> dict[str, str]:
        _keep(session, "async")
        session.add(Item(name="slow"))
        await session.flush()
        await asyncio.sleep(30)
        return {"status": "the client must never see this"}

    @app.post("/sync/items/slow", status_code=201)
    async def slow_sync_session(session: SessionDep) -> dict[str, str]:
        _keep(session, "sync")
        await run_in_threadpool(lambda: (session.add(Item(name="slow")), session.flush()))
        await asyncio.sleep(30)
        return {"status": "the client must never see this"}

    @app.websocket("/sync/ws")
    async def websocket(socket: WebSocket, session: SessionDep) -> None:
        await socket.accept()
        name = await socket.receive_text()
        await run_in_threadpool(lambda: (session.add(Item(name=name)), session.flush()))
        await socket.send_text("saved")
        if name == "fail":
            raise RuntimeError("the socket handler failed")
        await socket.close()

    @app.websocket("/async/ws")
    async def awebsocket(socket: WebSocket, session: AsyncSessionDep) -> None:
        await socket.accept()
        name = await socket.receive_text()
        session.add(Item(name=name))
        await session.flush()
        await socket.send_text("saved")
        if name == "fail":
            raise RuntimeError("the socket handler failed")
        await socket.close()

    return app
