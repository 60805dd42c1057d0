"""FiftyOne's database, for every stage that uses FiftyOne (the COCO source, mode=inspect).

With a `database_uri`, MongoDB is pinged with a short timeout before FiftyOne is imported (its first import
connects and would otherwise wait for server selection), and FiftyOne uses it; with none, FiftyOne starts
the mongod the set-up installs. Either way a failure is one message with the fix.
"""

from __future__ import annotations

import os
from typing import Any

from sentinel.errors import SentinelError
from sentinel.runtime.redaction import redact

PING_TIMEOUT_MS = 3000


def check_mongodb(uri: str, key: str = "datasets.<name>.database_uri") -> None:
    """Ping `uri` (set as `key`) with a short timeout; raise a SentinelError that says how to fix it."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    try:
        client: MongoClient[Any] = MongoClient(uri, serverSelectionTimeoutMS=PING_TIMEOUT_MS)
        try:
            client.admin.command("ping")
        finally:
            client.close()
    except PyMongoError as error:
        raise SentinelError(
            f"MongoDB at {redact(uri)} is not reachable ({type(error).__name__}). Fix: start it (e.g. `mongod --dbpath "
            f'<folder> --port 27017`), correct {key}, or set it to "" to let FiftyOne '
            "start its own mongod"
        ) from None


def import_fiftyone(database_uri: str, key: str = "datasets.<name>.database_uri") -> Any:
    """Import FiftyOne against the right database; its first import connects, so the URI goes first."""
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # the bundled mongod 6.0 is "old" to it
    if database_uri:
        check_mongodb(database_uri, key)
        os.environ["FIFTYONE_DATABASE_URI"] = database_uri
    elif os.environ.get("FIFTYONE_DATABASE_URI"):  # FiftyOne's own variable: where a URI with a password goes
        check_mongodb(os.environ["FIFTYONE_DATABASE_URI"], "FIFTYONE_DATABASE_URI")
    try:
        import fiftyone as fo

        fo.list_datasets()  # forces the connection (and FiftyOne's own mongod) now, not mid-export
    except SentinelError:
        raise
    except Exception as error:  # FiftyOne raises several service/config error types here
        raise SentinelError(
            f"FiftyOne could not reach MongoDB ({type(error).__name__}: {str(error)[:200]}). Fix: run "
            f"scripts/setup.sh (it installs the mongod FiftyOne starts), or point {key} "
            "at a running MongoDB"
        ) from None
    return fo
