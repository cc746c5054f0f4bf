"""A real PostgreSQL server for the tests, so usage accounting is checked against PostgreSQL itself."""

from __future__ import annotations

import glob
import os
import pwd
import re
import signal
import subprocess
import tempfile
import time

import psycopg

from tests.support import free_port

# Debian's postgresql package (scripts/install-test-deps.sh installs it) puts the server in
# /usr/lib/postgresql/<version>/bin, off the PATH. The newest installed one is used.
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin/postgres"
SUPERUSER = "postgres"
DATABASE = "tests"  # the database start() creates, which .url names
# initdb and postgres refuse to run as root: as root, the cluster belongs to this user instead.
UNPRIVILEGED_USER = "nobody"


def postgres_bin() -> str:
    """The bin directory of the newest PostgreSQL server installed; a clear error when there is none."""
    found = sorted(glob.glob(POSTGRES_BIN_GLOB),
                   key=lambda path: [int(part) for part in re.findall(r"\d+", path.split("/")[-3])])
    if not found:
        raise RuntimeError(f"no PostgreSQL server at {POSTGRES_BIN_GLOB}: run scripts/install-test-deps.sh as root")
    return os.path.dirname(found[-1])


class PostgresServer:
    """A throwaway PostgreSQL cluster as a subprocess on a free loopback port.

    A real server, not SQLite standing in for it, because the point is to prove that the usage
    upsert (INSERT ... ON CONFLICT DO UPDATE, PostgreSQL's dialect) adds exactly when several
    gunicorn workers write the same rows. The cluster lives in its own temporary directory (data,
    Unix socket, log), with fsync off and trust authentication on loopback only, so tests never
    touch a system PostgreSQL nor leave files behind. As root, initdb and postgres run as
    UNPRIVILEGED_USER (they refuse root), and the directory belongs to that user.
    """

    def __init__(self):
        self.bin = postgres_bin()
        self.port = free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="postgres-")
        self.data = os.path.join(self._workdir.name, "data")
        self._log = open(os.path.join(self._workdir.name, "postgres.log"), "w+b")  # noqa: SIM115 - closed by stop()
        self.url = self.url_for(DATABASE)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self._workdir.name, user.pw_uid, user.pw_gid)
            self._as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
        self.process = None
        self._databases = 0

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL (psycopg 3 driver) of one database of this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = SUPERUSER, **kwargs) -> psycopg.Connection:
        """A psycopg connection (close it, or use it in a `with` block)."""
        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database,
                               connect_timeout=2, **kwargs)

    def start(self, timeout: float = 30.0) -> PostgresServer:
        """initdb the cluster, start the server, create DATABASE, and return once it accepts connections;
        raise with its output otherwise."""
        try:
            initdb = subprocess.run(
                [*self._as_user, os.path.join(self.bin, "initdb"), "-D", self.data, "-U", SUPERUSER, "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync"],
                check=False, cwd=self._workdir.name, stdout=self._log, stderr=subprocess.STDOUT, timeout=timeout)
            failure = None if initdb.returncode == 0 else f"initdb exited with {initdb.returncode}"
        except subprocess.TimeoutExpired:
            failure = f"initdb did not finish within {timeout} s"
        if failure:
            output = self.log()
            self.stop()
            raise RuntimeError(f"{failure}:\n{output}")
        self.process = subprocess.Popen(
            [*self._as_user, os.path.join(self.bin, "postgres"), "-D", self.data, "-p", str(self.port),
             "-k", self._workdir.name, "-c", "listen_addresses=127.0.0.1", "-F",
             # Report a deadlock after 0.1 s, not 1 s: tests of concurrent writers meet some.
             "-c", "deadlock_timeout=100ms"],
            cwd=self._workdir.name, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.log()
                self.stop()
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{output}")
            try:
                with self.connect() as connection:
                    connection.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                time.sleep(0.05)
        else:
            output = self.log()
            self.stop()
            raise RuntimeError(f"postgres did not accept connections within {timeout} s:\n{output}")
        try:
            self.create_database(DATABASE)
        except psycopg.Error as error:
            output = self.log()
            self.stop()
            raise RuntimeError(f"postgres could not create the database {DATABASE}: {error}\n{output}") from error
        return self

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a new name each call unless given) and return its URL."""
        if name is None:
            self._databases += 1
            name = f"test_{self._databases}"
        with self.connect(autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def log(self) -> str:
        if self._log.closed:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the server ("fast" shutdown: clients are disconnected; killed if it hangs) and remove
        its directory; safe to call twice."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        self._workdir.cleanup()
        return self.process.returncode if self.process else None
