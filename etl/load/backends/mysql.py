"""MariaDB and MySQL (in progress: see the issue on the third database)."""

from __future__ import annotations

from etl.load.backends import Backend


class MysqlBackend(Backend):
    name = "mysql"
    dialects = ("mysql", "mariadb")
    url_forms = ("mysql+pymysql://user:password@host:3306/dbname",)
