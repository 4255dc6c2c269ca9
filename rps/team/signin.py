"""Sign-in: Basic credentials checked against MLflow's user store, fast and never stale, with a
limit on failed attempts that all workers share.

Upstream (MLflow 3.17.2): each uvicorn worker caches accepted credentials for
``auth_cache_ttl_seconds`` (``_USER_AUTH_CACHE``); ``_invalidate_user_auth_cache`` after a
password change or a deletion only clears the cache of the worker that served that request, so
with 2 workers an old password kept working in the other one until the TTL ran out. With TTL 0
every request pays one password-hash check (scrypt, ~0.1 s of CPU here). And nothing limits
failed sign-ins.

Here each worker caches which stored password hash accepted a credential; a cached credential
costs one indexed SELECT of the user's row, and is accepted only while that row still holds the
same hash. A password change or a deleted user therefore takes effect at once in every worker,
with no TTL. Failed sign-ins are recorded in a table of the auth database
(``rps_signin_failures``) that all workers read: past ``per_user`` failures for one user name, or
``per_address`` failures from one client address, within ``window`` seconds, a credential that is
not already cached as valid gets HTTP 429 without being checked (a user's running clients, whose
credential is cached, keep working).
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Optional

from cachetools import LRUCache
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, delete, insert, inspect, or_, select
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.security import check_password_hash, generate_password_hash


@dataclass(frozen=True)
class Limits:
    per_user: int = 10
    per_address: int = 30
    window: float = 300.0


class Verifier:
    """Checks credentials against MLflow's auth store, caching which stored hash accepted them."""

    def __init__(self, store, refused=lambda username, password, user: False, max_entries: int = 4096):
        self.store, self.refused = store, refused  # refused: right, but not to be accepted (MLflow's old default)
        self._key = secrets.token_bytes(32)  # the cache holds HMACs of passwords, never passwords
        self._accepted: LRUCache = LRUCache(max_entries)
        self._lock = threading.Lock()
        self._decoy = generate_password_hash(secrets.token_hex(16))  # unknown users cost a check too

    def _cache_key(self, username: str, password: str) -> tuple[str, bytes]:
        return username, hmac.new(self._key, password.encode("utf-8", "surrogatepass"), "sha256").digest()

    def _row(self, username: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.store.get_user(username)
        except MlflowException:
            return None

    def cached(self, username: str, password: str):
        """The user, if this credential was accepted before and the stored hash is unchanged; else None."""
        with self._lock:
            accepted = self._accepted.get(self._cache_key(username, password))
        if accepted is None:
            return None
        user = self._row(username)
        return user if user is not None and hmac.compare_digest(accepted, user.password_hash) else None

    def check(self, username: str, password: str):
        """The user if the credential is right (one password-hash check), else None."""
        user = self._row(username)
        if user is None:
            check_password_hash(self._decoy, password)  # same time as a wrong password: no user oracle
            return None
        if not check_password_hash(user.password_hash, password) or self.refused(username, password, user):
            return None
        with self._lock:
            self._accepted[self._cache_key(username, password)] = user.password_hash
        return user

    def user(self, username: str, password: str):
        return self.cached(username, password) or self.check(username, password)


class FailureLimiter:
    """Failed sign-ins per user name and per client address, in a table every worker shares."""

    def __init__(self, engine, limits: Limits):
        self.engine, self.limits = engine, limits
        self.table = Table("rps_signin_failures", MetaData(),
                           Column("id", Integer, primary_key=True, autoincrement=True),
                           Column("username", String(256), index=True),
                           Column("address", String(64), index=True),
                           Column("at", Float, index=True))
        try:
            self.table.create(engine, checkfirst=True)
        except SQLAlchemyError:  # another worker created it between the check and the create
            if not inspect(engine).has_table(self.table.name):
                raise

    def retry_after(self, username: str, address: str) -> Optional[int]:
        """Seconds until this user name and address may try again, or None if they may now."""
        now = time.time()
        t = self.table
        with self.engine.connect() as db:
            rows = db.execute(select(t.c.username, t.c.address, t.c.at).where(
                t.c.at > now - self.limits.window,
                or_(t.c.username == username[:256], t.c.address == address[:64]))).all()
        waits = [_wait([at for name, _, at in rows if name == username[:256]], self.limits.per_user),
                 _wait([at for _, addr, at in rows if addr == address[:64]], self.limits.per_address)]
        waits = [w for w in waits if w is not None]
        return math.ceil(max(waits) + self.limits.window - now) if waits else None

    def record(self, username: str, address: str) -> None:
        now = time.time()
        with self.engine.begin() as db:
            db.execute(insert(self.table).values(username=username[:256], address=address[:64], at=now))
            db.execute(delete(self.table).where(self.table.c.at < now - self.limits.window))


def _wait(times: list[float], limit: int) -> Optional[float]:
    """When the failure that keeps ``times`` at the limit was made (it lifts a window later), or None."""
    if len(times) < limit:
        return None
    return sorted(times)[len(times) - limit]
