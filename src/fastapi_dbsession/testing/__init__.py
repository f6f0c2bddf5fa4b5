"""Test your app's database code: isolation, query counting and test databases.

The pytest plugin (``fastapi_dbsession.testing.plugin``, registered automatically) builds its
fixtures from these helpers; they work without pytest too.
"""

from ._binding import TestBinding
from ._databases import (
    EngineSwap,
    create_test_database,
    drop_test_database,
    use_database,
    use_engine,
)
from ._isolation import isolated, override_dependency
from ._queries import QueryCount, assert_max_queries, count_queries
from ._retries import retries_disabled

__all__ = [
    "EngineSwap",
    "QueryCount",
    "TestBinding",
    "assert_max_queries",
    "count_queries",
    "create_test_database",
    "drop_test_database",
    "isolated",
    "override_dependency",
    "retries_disabled",
    "use_database",
    "use_engine",
]
