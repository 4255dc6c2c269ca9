"""Sign-in figures of a running tracking server (docs/deployment.md quotes them).

    python benchmarks/team_auth.py --url http://127.0.0.1:5000 --user alice        # password: $BENCH_PASSWORD
    python benchmarks/team_auth.py ... --guesses 40                                 # + failed sign-ins
    python benchmarks/team_auth.py ... --admin-password ... --stale-user dave       # + password-change delay

Measures, against whatever server answers at --url (rps-auth or MLflow's own basic-auth):

- the time of one signed-in request (``experiments/get``, one connection per request, so both
  uvicorn workers serve), median and 90th percentile over --requests;
- failed sign-ins: --guesses wrong passwords for one user from one address, as fast as one
  client sends them: how many were checked (401) before refusals (429) began, and their rate;
- how long an old password keeps working after an admin changes it: the old password is used
  (and so cached) on both workers, the password is changed, and the old one is tried every
  0.2 s (8 parallel connections each time, so that every worker answers) until 10 rounds in a row
  refuse it; capped at 90 s.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit


def request(url: str, user: str, password: str) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request("GET", "/api/2.0/mlflow/experiments/get?experiment_id=0",
                           headers={"Authorization": f"Basic {token}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def latency(url: str, user: str, password: str, count: int) -> str:
    assert request(url, user, password) == 200, "sign-in refused"
    times = []
    for _ in range(count):
        start = time.perf_counter()
        request(url, user, password)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return f"signed-in request: median {statistics.median(times):.1f} ms, p90 {times[int(0.9 * len(times))]:.1f} ms"


def guesses(url: str, user: str, count: int) -> str:
    start, statuses = time.perf_counter(), []
    for i in range(count):
        statuses.append(request(url, user, f"wrong-guess-{i}"))
    seconds = time.perf_counter() - start
    checked = statuses.index(429) if 429 in statuses else len(statuses)
    return (f"{count} wrong passwords in {seconds:.1f} s ({count / seconds:.1f}/s): {checked} checked (401) before "
            f"the first 429; statuses {sorted(set(statuses))}")


def together(call, count: int) -> list:
    """``count`` calls from 8 threads at once (the kernel hands concurrent connections to idle workers)."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: call(), range(count)))


def stale_password(url: str, admin_password: str, user: str) -> str:
    from mlflow.server.auth.client import AuthServiceClient

    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin_password)
    users = AuthServiceClient(url)
    old, new = "Bench-old-pw-4821x", "Bench-new-pw-9137y"
    try:
        users.create_user(user, old)
    except Exception:
        users.update_user_password(user, old)
    together(lambda: request(url, user, old), 40)  # parallel connections: every worker caches it
    users.update_user_password(user, new)
    changed, accepted, refused_rounds = time.perf_counter(), None, 0
    while time.perf_counter() - changed < 90 and refused_rounds < 10:  # 10 rounds: both workers asked
        sent = time.perf_counter() - changed
        if 200 in together(lambda: request(url, user, old), 8):
            accepted, refused_rounds = sent, 0
        else:
            refused_rounds += 1
        time.sleep(0.2)
    users.delete_user(user)
    if accepted is None:
        return "old password refused by every worker from the first try after the change"
    return f"old password still accepted by a worker {accepted:.1f} s after the change"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--guesses", type=int, default=0, help="wrong passwords to send (for --user)")
    p.add_argument("--guess-user", default="bench-target", help="the user the wrong passwords are for")
    p.add_argument("--admin-password", help="with --stale-user: measure how long an old password works")
    p.add_argument("--stale-user", help="a user the benchmark creates, re-passwords and deletes")
    args = p.parse_args()
    print(latency(args.url, args.user, os.environ["BENCH_PASSWORD"], args.requests))
    if args.guesses:
        print(guesses(args.url, args.guess_user, args.guesses))
    if args.admin_password and args.stale_user:
        print(stale_password(args.url, args.admin_password, args.stale_user))


if __name__ == "__main__":
    main()
