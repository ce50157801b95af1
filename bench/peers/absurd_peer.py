"""Absurd's side of `make bench`, written the way Absurd's Python SDK documentation shows.

    absurd_peer.py --db URL steps --n 2000
    absurd_peer.py --db URL parallel --runs 16 --steps 500
    absurd_peer.py --db URL resume --count 40 --settle-ms 100
    absurd_peer.py --db URL worker          (used by `parallel` and `resume`)

The schema and the queue are installed beforehand with `absurdctl init` and
`absurdctl create-queue bench` (the bench driver does it). Each command prints one JSON
object on its last stdout line; times are in milliseconds.

- steps: one task with N trivial `ctx.step`s, each timed around the call. The task is
  claimed and run with `work_batch` (the SDK's single-batch worker) in this process. Before
  each step, the floor: a single-row INSERT + COMMIT on a connection of its own, timed too.
- parallel: 16 worker processes (the documentation's way to scale: "spawn multiple
  processes"), each `start_worker(concurrency=1)` with the default poll interval; 16 tasks of
  `--steps` steps; steps/s = all steps / (last step end - first step start).
- resume: one worker process with the default settings (`start_worker()`, poll every
  0.25 s) runs a task that waits for `--count` events in turn; this process emits each
  event once the task sleeps on it, and the worker writes the time its next line runs.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from importlib.metadata import version

import psycopg
from absurd_sdk import Absurd

QUEUE = "bench"

# Filled by the tasks when they run in this process.
STEP_SAMPLES = []
RAW_SAMPLES = []
# The floor, interleaved with the steps: a single-row INSERT + COMMIT on its own connection.
RAW = {"conn": None}
RAW_TABLE = (
    "CREATE TABLE IF NOT EXISTS public.bench_raw_py (run_id uuid NOT NULL, key text NOT NULL,"
    " result jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (run_id, key))"
)


def raw_insert(run, i):
    t0 = time.perf_counter()
    RAW["conn"].execute(
        "INSERT INTO public.bench_raw_py (run_id, key, result) VALUES (%s, %s, %s)",
        (run, f"s#{i}", json.dumps(i)),
    )
    RAW_SAMPLES.append((time.perf_counter() - t0) * 1000.0)


def register(app, marks_file=None):
    @app.register_task("steps", default_max_attempts=1)
    def steps(params, ctx):
        n = params["n"]
        samples = []
        run = uuid.uuid4()
        first = time.time()
        for i in range(n):
            if RAW["conn"] is not None:
                raw_insert(run, i)
            t0 = time.perf_counter()
            ctx.step("s", lambda i=i: i)
            samples.append((time.perf_counter() - t0) * 1000.0)
        last = time.time()
        STEP_SAMPLES.extend(samples)
        return {"first": first, "last": last, "steps": n}

    @app.register_task("waiter", default_max_attempts=1)
    def waiter(params, ctx):
        for i in range(params["count"]):
            ctx.await_event(f"e{i}")
            # The flow's next line: on replays it runs again; the driver keeps the first time.
            with open(marks_file, "a") as f:
                f.write(f"{i}\t{time.time()}\n")
        return params["count"]


def cmd_worker(args):
    worker = Absurd(args.db, queue_name=QUEUE)
    register(worker, args.marks)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop_worker())
    print("ready", flush=True)
    worker.start_worker(concurrency=1)


def start_workers(args, count, marks=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--db", args.db, "worker"]
    if marks:
        cmd += ["--marks", marks]
    workers = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(count)
    ]
    for w in workers:
        assert w.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # let every worker enter its poll loop
    return workers


def stop_workers(workers):
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout=10)
        except subprocess.TimeoutExpired:
            w.kill()


def cmd_steps(args):
    RAW["conn"] = psycopg.connect(args.db, autocommit=True)
    RAW["conn"].execute(RAW_TABLE)
    client = Absurd(args.db, queue_name=QUEUE)
    register(client)
    spawned = client.spawn("steps", {"n": args.n})
    client.work_batch(worker_id="bench", batch_size=1)
    snapshot = client.fetch_task_result(spawned["task_id"])
    assert snapshot.state == "completed", snapshot
    emit({"samples_ms": STEP_SAMPLES, "raw_ms": RAW_SAMPLES})


def cmd_parallel(args):
    workers = start_workers(args, args.runs)
    try:
        client = Absurd(args.db, queue_name=QUEUE)
        register(client)
        ids = [client.spawn("steps", {"n": args.steps})["task_id"] for _ in range(args.runs)]
        results = [client.await_task_result(t, timeout=600) for t in ids]
    finally:
        stop_workers(workers)
    for r in results:
        assert r.state == "completed", r
    first = min(r.result["first"] for r in results)
    last = max(r.result["last"] for r in results)
    total = sum(r.result["steps"] for r in results)
    emit({"steps": total, "seconds": last - first, "workers": args.runs})


def cmd_resume(args):
    marks = os.path.abspath(f"absurd-marks-{os.getpid()}.tsv")
    open(marks, "w").close()
    workers = start_workers(args, 1, marks)
    samples = []
    try:
        client = Absurd(args.db, queue_name=QUEUE)
        register(client, marks)
        task = client.spawn("waiter", {"count": args.count})["task_id"]
        with psycopg.connect(args.db, autocommit=True) as conn:
            for i in range(args.count):
                wait_until(
                    lambda: conn.execute(
                        f"SELECT 1 FROM absurd.r_{QUEUE} WHERE task_id = %s"
                        " AND state = 'sleeping' AND wake_event = %s",
                        (task, f"e{i}"),
                    ).fetchone()
                    is not None,
                    f"the task to sleep on e{i}",
                )
                time.sleep(args.settle_ms / 1000.0)
                emitted = time.time()
                client.emit_event(f"e{i}", i)
                resumed = wait_until(lambda: first_mark(marks, i), f"the task to resume after e{i}")
                samples.append((resumed - emitted) * 1000.0)
        snapshot = client.await_task_result(task, timeout=60)
        assert snapshot.state == "completed", snapshot
    finally:
        stop_workers(workers)
        os.unlink(marks)
    emit({"samples_ms": samples})


def first_mark(path, i):
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                k, t = line.split("\t")
                if int(k) == i:
                    return float(t)
    return None


def wait_until(probe, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"absurd peer: timed out waiting for {what}")
        time.sleep(0.002)


def cmd_versions(args):
    emit({"absurd-sdk": version("absurd-sdk"), "absurdctl": version("absurdctl"),
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
    p = sub.add_parser("worker")
    p.add_argument("--marks")
    sub.add_parser("versions")
    args = parser.parse_args()
    {"steps": cmd_steps, "parallel": cmd_parallel, "resume": cmd_resume,
     "worker": cmd_worker, "versions": cmd_versions}[args.cmd](args)


if __name__ == "__main__":
    main()
