#!/usr/bin/env python3
"""The example agent driven through `cairn mcp` by the official MCP Python SDK (`mcp` on PyPI),
as an agent would: list the tools, start the research run, poll it until it waits for its
person, read the question and its schema, see a payload failing the schema refused, answer it,
poll until it succeeds, then read it as a resource and read its logs.

The server is launched over stdio (`--server`, a JSON list: the command and its arguments), or
reached over streamable HTTP (`--url`, with the bearer token in CAIRN_MCP_TOKEN). Exits 0 when
every check held; otherwise prints what failed and exits 1.
"""

import argparse
import asyncio
import json
import os
import sys

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

TOOLS = {
    "list_runs", "inspect_run", "start_run", "wait_run", "answer_wait",
    "cancel_run", "retry_run", "fork_run", "run_logs", "raise_budget",
}


class Failed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failed(what)


def text_of(result):
    return "".join(getattr(block, "text", "") for block in result.content)


async def call(client, tool, arguments, *, refused=False):
    """The tool's structured answer (or text); with refused=True, the error's text."""
    result = await client.call_tool(tool, arguments)
    if refused:
        check(result.is_error, f"{tool} {arguments} was not refused: {text_of(result)}")
        return text_of(result)
    check(not result.is_error, f"{tool} {arguments} failed: {text_of(result)}")
    return result.structured_content if result.structured_content is not None else text_of(result)


def detail_of(run):
    """The engine's view of a run: `cairn dev` inspects give it whole, `kubectl cairn` inside
    `detail` (next to the FlowRun and its pods)."""
    detail = run.get("detail", run)
    check(detail is not None, f"the run has no detail: {run.get('detailError')}")
    return detail


async def poll(client, args, until, run=None):
    """wait_run until the run is where `until` says, as an agent polls a handle."""
    run = run or args.name
    for _ in range(20):
        waited = await call(client, "wait_run", {
            "run": run, "namespace": args.namespace, "until": until, "timeout_seconds": 30,
        })
        if waited["reached"]:
            return detail_of(waited["run"])
    raise Failed(f"{run} was not {until} after 20 polls: {json.dumps(waited)[:2000]}")


async def fork(client, args):
    """The finished run forked at `draft`, its approval answered ahead: the steps before `draft`
    are reused, not paid again."""
    run = f"{args.name}-fork"
    forked = await call(client, "fork_run", {
        "run": args.name, "namespace": args.namespace, "from_step": "draft", "name": run,
        "answers": {f"approve-{run}": True},
    })
    check("forked" in forked, f"fork_run said: {forked}")
    done = await poll(client, args, "finished", run)
    check(done["run"]["phase"] == "Succeeded", f"the fork did not succeed: {done['run']}")
    reused = done["totals"].get("reused_steps", 0)
    check(reused > 0, f"the fork reused nothing: {done['totals']}")


async def over_budget(client, args):
    """A run started with a budget below its first model call parks at it; raised, it goes on."""
    run = f"{args.name}-thrifty"
    await call(client, "start_run", {
        "flow": args.flow, "name": run, "namespace": args.namespace, "budget_usd": "0.001",
        "input": {"topic": "budgets", "breadth": 1},
    })
    parked = await poll(client, args, "input", run)
    check(parked["wait"]["kind"] == "budget", f"{run} is not parked at its budget: {parked['wait']}")
    low = await call(client, "raise_budget", {"run": run, "namespace": args.namespace, "usd": "0.0001"},
                     refused=True)
    check("spent" in low, f"a budget below what was spent: {low}")
    raised = await call(client, "raise_budget", {"run": run, "namespace": args.namespace, "usd": "5"})
    check("$5.00" in raised, f"raise_budget said: {raised}")
    asks = await poll(client, args, "input", run)
    check(asks["wait"]["kind"] == "event", f"{run} does not ask its person next: {asks['wait']}")
    await call(client, "cancel_run", {"run": run, "namespace": args.namespace})
    cancelled = await poll(client, args, "finished", run)
    check(cancelled["run"]["phase"] == "Cancelled", f"{run} was not cancelled: {cancelled['run']}")


async def scenario(client, args):
    tools = {tool.name for tool in (await client.list_tools()).tools}
    check(TOOLS <= tools, f"missing tools: {sorted(TOOLS - tools)} (has {sorted(tools)})")

    unknown = await call(client, "inspect_run", {"run": "no-such-run", "namespace": args.namespace},
                         refused=True)
    check("not found" in unknown, f"an unknown run's error does not say so: {unknown}")

    odd = await call(client, "start_run", {
        "flow": "--help", "name": f"{args.name}-odd", "namespace": args.namespace,
    }, refused=True)
    check("--help" in odd, f"a flow named like a flag: {odd}")

    started = await call(client, "start_run", {
        "flow": args.flow, "name": args.name, "namespace": args.namespace,
        "input": {"topic": "agents over MCP", "breadth": 2},
    })
    check(started["run"] == args.name, f"start_run returned another handle: {started}")
    again = await call(client, "start_run", {
        "flow": args.flow, "name": args.name, "namespace": args.namespace,
        "input": {"topic": "agents over MCP", "breadth": 2},
    })
    check("already started" in again["message"], f"starting the same name again: {again}")

    waiting = await poll(client, args, "input")
    check(waiting["run"]["phase"] == "Waiting", f"not waiting: {waiting['run']}")
    wait = waiting["wait"]
    check(wait["event"] == f"approve-{args.name}", f"waits for another event: {wait}")
    check("Publish the report" in (wait.get("question") or ""), f"no question: {wait}")
    check(wait.get("schema", {}).get("type") == "boolean", f"not a boolean schema: {wait}")

    refused = await call(client, "answer_wait", {
        "run": args.name, "namespace": args.namespace, "payload": "yes please",
    }, refused=True)
    check("schema" in refused, f"the refusal does not name the schema: {refused}")
    still = detail_of(await call(client, "inspect_run", {"run": args.name, "namespace": args.namespace}))
    check(still["run"]["phase"] == "Waiting", f"a refused answer moved the run: {still['run']}")

    answered = await call(client, "answer_wait", {
        "run": args.name, "namespace": args.namespace, "payload": True,
    })
    check("approved" in answered, f"answer_wait said: {answered}")

    done = await poll(client, args, "finished")
    check(done["run"]["phase"] == "Succeeded", f"did not succeed: {done['run']}")
    keys = [step["key"] for step in done["steps"]]
    check("final" in keys and "draft" in keys, f"steps missing: {keys}")

    listed = await call(client, "list_runs", {"namespace": args.namespace, "flow": args.flow})
    names = [run["name"] for run in listed["runs"]]
    check(args.name in names, f"list_runs does not show {args.name}: {names}")
    bad_phase = await call(client, "list_runs", {"phase": "finishedish"}, refused=True)
    check("unknown phase" in bad_phase, f"a bad phase: {bad_phase}")

    uri = f"cairn://runs/{args.namespace}/{args.name}"
    listed_uris = [str(r.uri) for r in (await client.list_resources()).resources]
    check(uri in listed_uris, f"list_resources does not list {uri}: {listed_uris}")
    templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
    check("cairn://runs/{namespace}/{name}" in templates, f"resource templates: {templates}")
    resource = await client.read_resource(uri)
    read = detail_of(json.loads(resource.contents[0].text))
    check(read["run"]["phase"] == "Succeeded", f"the resource says {read['run']}")
    try:
        await client.read_resource("cairn://nothing")
        raise Failed("an unknown resource was read")
    except MCPError:
        pass

    logs = await call(client, "run_logs", {"run": args.name, "namespace": args.namespace})
    check(len(logs) > 0, "no logs")

    cancelled = await call(client, "cancel_run", {"run": args.name, "namespace": args.namespace})
    check("nothing to cancel" in cancelled or "succeeded" in cancelled.lower(),
          f"cancelling a finished run: {cancelled}")

    await fork(client, args)
    await over_budget(client, args)
    print(json.dumps({"run": args.name, "steps": keys, "tools": sorted(tools)}))


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", help="JSON list: the stdio server's command and arguments")
    parser.add_argument("--url", help="the streamable HTTP endpoint")
    parser.add_argument("--flow", default="research")
    parser.add_argument("--name", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--mode", default="auto", choices=["auto", "legacy"],
                        help="legacy: the 2025-11-25 protocol, with its initialize handshake")
    args = parser.parse_args()
    if args.url:
        async with httpx2.AsyncClient(timeout=30) as anonymous:
            answer = await anonymous.post(args.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        if answer.status_code != 401 or "unauthorized" not in answer.text:
            print(f"FAILED: a request without the token got {answer.status_code}: {answer.text}",
                  file=sys.stderr)
            sys.exit(1)
        token = os.environ["CAIRN_MCP_TOKEN"]
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120)
        target = streamable_http_client(args.url, http_client=http)
    else:
        command = json.loads(args.server)
        target = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    try:
        async with Client(target, mode=args.mode, read_timeout_seconds=120) as client:
            await scenario(client, args)
    except Failed as failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        sys.exit(1)


asyncio.run(main())
