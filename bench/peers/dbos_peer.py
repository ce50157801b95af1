"""DBOS's side of `make bench`, written the way the DBOS Transact (Python) documentation shows:
`DBOS(config=...)` with a Postgres system database, `@DBOS.workflow()` / `@DBOS.step()`,
`DBOS.launch()`, `DBOS.start_workflow`, `DBOS.send` / `DBOS.recv`.

    dbos_peer.py --db URL steps --n 2000
    dbos_peer.py --db URL parallel --runs 16 --steps 500
    dbos_peer.py --db URL resume --count 40 --settle-ms 100

URL names the system database; DBOS creates it (and its schema) on launch. Each command prints
one JSON object on its last stdout line; times are in milliseconds.

- steps: one workflow with N trivial steps, each timed around the call. Before each step, the
  floor: a single-row INSERT + COMMIT on a connection of its own (psycopg), timed too.
- parallel: 16 workflows started with `DBOS.start_workflow` in this process (DBOS runs them
  on its thread pool); steps/s = all steps / (last step end - first step start).
- resume: a workflow that calls `DBOS.recv` `--count` times; this process sends each message
  with `DBOS.send` once the workflow is about to wait (plus --settle-ms), and the workflow
  records the time its next line runs. Unlike Absurd and Cairn, the waiting workflow stays in
  memory (a thread blocked in recv, woken through LISTEN/NOTIFY): nothing is relaunched.
"""

import argparse
import json
import logging
import queue
import time
import uuid
from importlib.metadata import version

import psycopg
from dbos import DBOS, DBOSConfig

STEP_SAMPLES = []
RAW_SAMPLES = []
# The floor, interleaved with the steps: a single-row INSERT + COMMIT on its own connection.
RAW = {"conn": None}
RAW_TABLE = (
    "CREATE TABLE IF NOT EXISTS public.bench_raw_py (run_id uuid NOT NULL, key text NOT NULL,"
    " result jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (run_id, key))"
)
READY = queue.Queue()
RESUMED = {}


@DBOS.step()
def trivial(i):
    return i


@DBOS.workflow()
def steps_wf(n, record):
    samples = []
    run = uuid.uuid4()
    first = time.time()
    for i in range(n):
        if record and RAW["conn"] is not None:
            t0 = time.perf_counter()
            RAW["conn"].execute(
                "INSERT INTO public.bench_raw_py (run_id, key, result) VALUES (%s, %s, %s)",
                (run, f"s#{i}", json.dumps(i)),
            )
            RAW_SAMPLES.append((time.perf_counter() - t0) * 1000.0)
        t0 = time.perf_counter()
        trivial(i)
        samples.append((time.perf_counter() - t0) * 1000.0)
    last = time.time()
    if record:
        STEP_SAMPLES.extend(samples)
    return {"first": first, "last": last, "steps": n}


@DBOS.workflow()
def waiter(count):
    for i in range(count):
        READY.put(i)
        DBOS.recv("bench", timeout_seconds=120)
        RESUMED.setdefault(i, time.time())  # the flow's next line
    return count


def launch(db):
    config: DBOSConfig = {"name": "cairn-bench", "system_database_url": db, "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)


def cmd_steps(args):
    launch(args.db)
    RAW["conn"] = psycopg.connect(args.db, autocommit=True)
    RAW["conn"].execute(RAW_TABLE)
    DBOS.start_workflow(steps_wf, args.n, True).get_result()
    emit({"samples_ms": STEP_SAMPLES, "raw_ms": RAW_SAMPLES})


def cmd_parallel(args):
    launch(args.db)
    handles = [DBOS.start_workflow(steps_wf, args.steps, False) for _ in range(args.runs)]
    results = [h.get_result() for h in handles]
    first = min(r["first"] for r in results)
    last = max(r["last"] for r in results)
    emit({"steps": sum(r["steps"] for r in results), "seconds": last - first})


def cmd_resume(args):
    launch(args.db)
    handle = DBOS.start_workflow(waiter, args.count)
    samples = []
    for i in range(args.count):
        assert READY.get(timeout=60) == i
        time.sleep(args.settle_ms / 1000.0)
        emitted = time.time()
        DBOS.send(handle.get_workflow_id(), i, "bench")
        deadline = time.monotonic() + 60
        while i not in RESUMED:
            if time.monotonic() > deadline:
                raise SystemExit(f"dbos peer: the workflow did not resume after message {i}")
            time.sleep(0.001)
        samples.append((RESUMED[i] - emitted) * 1000.0)
    handle.get_result()
    emit({"samples_ms": samples})


def cmd_versions(args):
    emit({"dbos": version("dbos"), "sqlalchemy": version("sqlalchemy"),
          "psycopg": version("psycopg")})


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("steps")
    p.add_argument("--n", type=int, default=2000)
    p = sub.add_parser("parallel")
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--steps", type=int, default=500)
    p = sub.add_parser("resume")
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--settle-ms", type=float, default=100)
    sub.add_parser("versions")
    args = parser.parse_args()
    try:
        {"steps": cmd_steps, "parallel": cmd_parallel, "resume": cmd_resume,
         "versions": cmd_versions}[args.cmd](args)
    finally:
        if args.cmd != "versions":
            DBOS.destroy()


if __name__ == "__main__":
    main()
