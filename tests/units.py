"""Write a transaction scenario once, in sync style, and run it on the sync and async APIs.

``SyncUnits`` calls the sync API directly. ``AsyncUnits`` runs the same scenario inside
SQLAlchemy's greenlet bridge: each ``with u.transaction()`` enters ``db.async_transaction()``
and each statement awaits the ``AsyncSession``, so the async code paths really run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.util import await_only, greenlet_spawn

from fastapi_dbsession import DatabaseSessionManager
from tests.models import Item


class SyncUnits:
    is_async = False

    def __init__(self, db: DatabaseSessionManager) -> None:
        self.db = db

    def run(self, scenario: Callable[[Any], object]) -> object:
        return scenario(self)

    def transaction(self, **options: Any) -> AbstractContextManager[Any]:
        return self.db.transaction(**options)

    def transactional(self, bound: bool = True, **options: Any) -> Callable[..., Any]:
        from fastapi_dbsession import transactional

        decorator = self.db.transactional(**options) if bound else transactional(**options)
        return lambda body: self._call(decorator(body))

    def _call(self, unit: Callable[..., Any]) -> Callable[..., Any]:
        return unit

    def add_item(self, session: Any, name: str) -> None:
        session.add(Item(name=name))
        self.flush(session)

    def flush(self, session: Any) -> None:
        session.flush()

    def execute(self, session: Any, sql: str, **params: Any) -> Any:
        return session.execute(text(sql), params)

    def names(self, session: Any) -> list[str]:
        return list(session.scalars(select(Item.name).order_by(Item.name)))

    def commit(self, session: Any) -> None:
        session.commit()

    def rollback(self, session: Any) -> None:
        session.rollback()

    def current(self) -> Any:
        return self.db.current_session()

    def dispose(self) -> None:
        self.db.dispose()


class AsyncUnits(SyncUnits):
    is_async = True

    def run(self, scenario: Callable[[Any], object]) -> object:
        import asyncio

        async def main() -> object:
            try:
                return await greenlet_spawn(scenario, self)
            finally:
                await self.db.async_dispose()

        return asyncio.run(main())

    @contextmanager
    def transaction(self, **options: Any) -> Iterator[Any]:
        manager = self.db.async_transaction(**options)
        session = await_only(manager.__aenter__())
        try:
            yield session
        except BaseException as error:
            if not await_only(manager.__aexit__(type(error), error, error.__traceback__)):
                raise
        else:
            await_only(manager.__aexit__(None, None, None))

    def transactional(self, bound: bool = True, **options: Any) -> Callable[..., Any]:
        from fastapi_dbsession import transactional

        decorator = self.db.transactional(**options) if bound else transactional(**options)

        def wrap(body: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(body)
            async def async_body(*args: Any, **kwargs: Any) -> Any:
                return await greenlet_spawn(body, *args, **kwargs)

            unit = decorator(async_body)
            return lambda *args, **kwargs: await_only(unit(*args, **kwargs))

        return wrap

    def flush(self, session: Any) -> None:
        await_only(session.flush())

    def execute(self, session: Any, sql: str, **params: Any) -> Any:
        return await_only(session.execute(text(sql), params))

    def names(self, session: Any) -> list[str]:
        return list(await_only(session.scalars(select(Item.name).order_by(Item.name))))

    def commit(self, session: Any) -> None:
        await_only(session.commit())

    def rollback(self, session: Any) -> None:
        await_only(session.rollback())

    def current(self) -> Any:
        return self.db.current_async_session()

    def dispose(self) -> None:
        pass  # run() disposes on the loop
