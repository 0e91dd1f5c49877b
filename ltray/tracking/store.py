"""Where MLflow records go: resolving the tracking URI and checking, before any training starts, that the store works.

MLflow 3 no longer accepts the `./mlruns` file store, so local runs use an embedded SQLite database and clusters use
an `mlflow server` (http/https) or a SQL database directly.
"""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ltray.errors import ConfigError, LtrayError

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_MAGIC = b"SQLite format 3\x00"
SQL_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
HTTP_SCHEMES = ("http", "https")


def default_tracking_uri(workdir: Path) -> str:
    """The embedded store of a local run: `sqlite:///<absolute workdir>/mlflow.db`."""
    return sqlite_uri(Path(workdir) / "mlflow.db")


def sqlite_uri(db_path: Path) -> str:
    """`sqlite:///` followed by the absolute path (four slashes in total on POSIX)."""
    return "sqlite:///" + Path(db_path).expanduser().resolve().as_posix()


def resolve_tracking_uri(uri: str | None, workdir: Path) -> str:
    """The tracking URI a run uses, validated and normalised. Precedence: the explicit `uri`, then the
    `MLFLOW_TRACKING_URI` environment variable (set for every Ray container of the cluster packaging), then
    `default_tracking_uri(workdir)`. A relative SQLite path or a bare path to a `.db`/`.sqlite`/`.sqlite3` file is
    made absolute (relative to the current directory, as SQLAlchemy reads it), so that Ray workers with another
    working directory write to the same database."""
    chosen = uri if uri is not None else os.environ.get(TRACKING_URI_ENV) or None
    if chosen is None:
        return default_tracking_uri(workdir)
    chosen = chosen.strip()
    if not chosen:
        raise ConfigError("the MLflow tracking URI is empty")
    parsed = urllib.parse.urlsplit(chosen)
    scheme = parsed.scheme.lower()
    if not scheme:
        if Path(chosen).expanduser().suffix.lower() in SQLITE_SUFFIXES:
            return sqlite_uri(Path(chosen))
        raise ConfigError(
            f"MLflow tracking URI {chosen!r} is neither a URI nor a SQLite file (.db, .sqlite, .sqlite3); "
            "MLflow 3 refuses directory file stores such as ./mlruns; use sqlite:///<absolute path>.db or http(s)://"
        )
    if scheme == "sqlite":
        return sqlite_uri(sqlite_path(chosen))
    if scheme in HTTP_SCHEMES:
        if not parsed.hostname:
            raise ConfigError(f"MLflow tracking URI {chosen!r} has no host")
        return chosen.rstrip("/")
    if scheme.split("+", 1)[0] in SQL_DEFAULT_PORTS:
        if not parsed.hostname:
            raise ConfigError(f"MLflow tracking URI {chosen!r} has no database host")
        return chosen
    if scheme == "file":
        raise ConfigError(
            f"MLflow tracking URI {chosen!r} is a file store, which MLflow 3 refuses; "
            "use sqlite:///<absolute path>.db or an http(s):// tracking server"
        )
    raise ConfigError(
        f"unsupported MLflow tracking URI scheme {scheme!r} in {chosen!r}; "
        "use sqlite:///, http(s)://, postgresql://, mysql:// or mssql://"
    )


def sqlite_path(uri: str) -> Path:
    """The absolute database path of a `sqlite:///` URI; in-memory databases are rejected (not shared by workers)."""
    prefix = "sqlite:///"
    if not uri.lower().startswith(prefix):
        raise ConfigError(f"SQLite tracking URI {uri!r} must start with {prefix!r} followed by a file path")
    path_text = urllib.parse.unquote(urllib.parse.urlsplit(uri).path[1:])
    if not path_text or path_text == ":memory:":
        raise ConfigError(f"SQLite tracking URI {uri!r} names no file; an in-memory store is not shared by workers")
    return Path(path_text).expanduser().resolve()


def check_tracking_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    - http(s): one REST call (`experiments/search`, max 1 result) with `timeout_s`; it is subject to the server's
      host validation and authentication, unlike `/health`, so a misconfigured `--allowed-hosts` is caught too.
      `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` are sent as MLflow sends them.
    - sqlite: the parent directory exists or can be created and is writable; an existing file must be an SQLite
      database that is empty or an MLflow store. The file is only read (never created, repaired or overwritten).
    - SQL servers: a TCP connection to the database host and port within `timeout_s`."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in HTTP_SCHEMES:
        _check_http(uri, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(sqlite_path(uri))
    elif scheme.split("+", 1)[0] in SQL_DEFAULT_PORTS:
        _check_sql_server(uri, timeout_s)
    else:
        raise ConfigError(f"unsupported MLflow tracking URI {uri!r}; resolve it with resolve_tracking_uri first")


def _unreachable(uri: str, reason: object) -> LtrayError:
    return LtrayError(f"MLflow tracking server at {uri} is not reachable: {reason}")


def _check_http(uri: str, timeout_s: float) -> None:
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(1)
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise LtrayError(
                f"MLflow tracking server at {uri} refused the request (HTTP {error.code}); "
                "check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD and --allowed-hosts"
            ) from None
        raise _unreachable(uri, f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _unreachable(uri, error.reason) from None
    except (OSError, ValueError) as error:
        raise _unreachable(uri, error) from None


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {credentials}"}
    return {}


def _check_sqlite(db_path: Path) -> None:
    parent = db_path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LtrayError(f"cannot create the MLflow store directory {parent}: {error.strerror or error}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LtrayError(f"the MLflow store directory {parent} is not writable")
    if not db_path.exists():
        return
    if not db_path.is_file():
        raise LtrayError(f"the MLflow store {db_path} is not a file")
    with db_path.open("rb") as handle:
        header = handle.read(len(SQLITE_MAGIC))
    if not header:
        return
    if header != SQLITE_MAGIC:
        raise LtrayError(f"the MLflow store {db_path} is not an SQLite database (corrupt or foreign file); left untouched")
    tables = _sqlite_tables(db_path)
    if tables and not {"experiments", "runs"} <= tables:
        raise LtrayError(f"the SQLite database {db_path} is not an MLflow tracking store; left untouched")


def _sqlite_tables(db_path: Path) -> set[str]:
    read_only = f"{db_path.as_uri()}?mode=ro"
    try:
        connection = sqlite3.connect(read_only, uri=True, timeout=5.0)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise LtrayError(f"the MLflow store {db_path} is a corrupt SQLite database ({error}); left untouched") from None
    return {name for (name,) in rows}


def _check_sql_server(uri: str, timeout_s: float) -> None:
    parsed = urllib.parse.urlsplit(uri)
    port = parsed.port or SQL_DEFAULT_PORTS[parsed.scheme.lower().split("+", 1)[0]]
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as error:
        raise LtrayError(
            f"MLflow tracking database at {parsed.hostname}:{port} is not reachable: {error.strerror or error}"
        ) from None


STORE_CREATION_TIMEOUT_S = 30.0


def create_sqlite_store(uri: str, timeout_s: float = STORE_CREATION_TIMEOUT_S) -> None:
    """Create the tables of a new SQLite store now, once, from the process that checked it (the sweep's driver, the
    tracking server's wrapper), before trial processes or a second tool open it: two processes that both find an
    empty file both create tables, and the slower one fails ('table ... already exists'). Other URIs: nothing to do.

    ltray processes take turns through a lock on the store's folder; a process outside ltray (`mlflow ui` started
    at the same moment) may still race, so a failed creation is retried until the store opens, for `timeout_s`."""
    import fcntl

    if urllib.parse.urlsplit(uri).scheme.lower() != "sqlite":
        return
    db_path = sqlite_path(uri)
    if db_path.is_file() and {"experiments", "runs"} <= _sqlite_tables(db_path):
        return
    from mlflow.tracking import MlflowClient

    folder = os.open(db_path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                MlflowClient(uri).search_experiments(max_results=1)
                return
            except Exception as error:  # MLflow wraps SQLAlchemy's errors in several ways
                if time.monotonic() > deadline:
                    reason = " ".join(str(error).split())[:300]
                    raise LtrayError(f"could not create the MLflow store {db_path}: {reason}") from None
                time.sleep(1.0)
    finally:
        os.close(folder)
