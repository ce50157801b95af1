//! The end-to-end scenarios on the real cluster, one test binary: `make test-cluster` runs them
//! (`cargo test -p cairn-e2e -- --ignored`, after `make static-bins`); plain `cargo test` lists them as ignored.

// The operator: the example, crashes, cancels, retention, deletion.
mod operator;
// Bad work reported, not crash-looped: unknown flows, refused objects, images, input, deadlines.
mod operator_failures;
// Two operators: the Lease, the handover, the running budget, least privilege, metrics.
mod operator_leader;
// Child runs: the parent's settings on their pods; a parent named with 200 characters.
mod children;
// What flow pods offer flow code: a writable /tmp, volumes, labels, affinity.
mod flow_pods;
// A flow pod cut off from Postgres by iptables: a crash within the bound, then a relaunch.
mod network;
// `kubectl cairn` run through kubectl itself against runs in every phase.
mod kubectl_cairn;
// Its commands that change runs: approve, emit, cancel, retry.
mod kubectl_cairn_writes;
// `kubectl cairn mcp` driven by the official MCP Python SDK.
mod kubectl_cairn_mcp;
// `kubectl cairn dashboard` in headless Chromium: what RBAC lets each user see.
mod kubectl_cairn_console;
// Step outputs shown, a sensitive step's hidden.
mod kubectl_cairn_outputs;
// Artifacts in the cluster's S3 server, listed and downloaded with kubectl cairn.
mod kubectl_cairn_artifacts;
// Spend budgets: a child parks at its parent's budget until it is raised.
mod budgets;
// Concurrency limits per Flow and per key (issue 19).
mod concurrency;
// FlowSchedules: Forbid, Replace, trigger, suspend, bad schedules, a leader change.
mod schedules;
// Traces: the example, crashed and approved, as one trace in the cluster's collector.
mod traces;
