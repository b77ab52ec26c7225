"""Create the PostgreSQL database ``DATABASE_URL`` names, if it is missing.

``make serve`` runs this before ``migrate``, so a fresh PostgreSQL needs no
``createdb`` (or ``psql``) first. It connects to the server's ``postgres``
maintenance database with the same credentials. Other databases (SQLite) are
left alone: Django creates the file itself.
"""

from __future__ import annotations

import os
import sys

import dj_database_url
import psycopg
from psycopg import sql


def create_database(url: str) -> bool:
    """Create the database of ``url`` unless it exists; whether it was created."""
    config = dj_database_url.parse(url)
    if config["ENGINE"] != "django.db.backends.postgresql":
        return False
    credentials = {
        "host": config.get("HOST") or None,
        "port": config.get("PORT") or None,
        "user": config.get("USER") or None,
        "password": config.get("PASSWORD") or None,
    }
    with psycopg.connect(dbname="postgres", autocommit=True, **credentials) as connection:
        name = config["NAME"]
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return False
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


if __name__ == "__main__":
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        sys.exit("Set DATABASE_URL.")
    if create_database(url):
        print(f"created database {dj_database_url.parse(url)['NAME']}")
