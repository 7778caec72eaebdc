"""The throwaway PostgreSQL the benchmarks (and the PostgreSQL index's tests to come) start."""

from __future__ import annotations

import psycopg

from dicom_node.tools.postgres_local import start_postgres


def test_a_throwaway_cluster_starts_survives_a_kill_with_its_commits_and_goes_away() -> None:
    server = start_postgres()
    try:
        assert server.url.startswith("postgresql://postgres@127.0.0.1:")
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (n integer)")
            conn.execute("INSERT INTO t VALUES (1), (2)")
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        server.kill()  # SIGKILL: a crash; committed rows are in the WAL
        server.restart()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    finally:
        server.stop()
    assert not server.folder.exists()
    assert server.process.poll() is not None
