//! Flows made for the integration tests. Each one records its side effects so tests count
//! what really ran instead of trusting logs:
//!
//! - `CAIRN_TEST_LOG=<file>`: every side effect appends one line `run<TAB>what<TAB>attempt<TAB>pid`
//!   (a single `write` on a file opened for appending, so concurrent processes do not interleave).
//! - Hang points (`"hang": "<point>"` in an input): the first time a run reaches that point it
//!   records `hang:<point>` (with its pid) and sleeps, so a test can SIGKILL it right there.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use cairn::{Ctx, RetryPolicy, Runner, Usage};
use cairn_tests::payloads::{big_text, fnv1a};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How long a hung process sleeps: far longer than any test waits for it.
const HANG: Duration = Duration::from_secs(120);

/// Appends `run<TAB>what<TAB>attempt<TAB>pid` to `$CAIRN_TEST_LOG`; `-` prints it prefixed
/// `effect<TAB>` instead, for flow pods (whose logs the cluster tests read).
fn effect(ctx: &Ctx, what: &str) {
    let Some(path) = std::env::var_os("CAIRN_TEST_LOG") else {
        return;
    };
    let line = format!(
        "{}\t{what}\t{}\t{}\n",
        ctx.run_name(),
        ctx.attempt(),
        std::process::id()
    );
    if path == "-" {
        print!("effect\t{line}");
        return;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("cannot open CAIRN_TEST_LOG");
    file.write_all(line.as_bytes())
        .expect("cannot append to CAIRN_TEST_LOG");
}

/// Whether this run already recorded `what` (in any attempt).
fn seen(ctx: &Ctx, what: &str) -> bool {
    let Some(path) = std::env::var_os("CAIRN_TEST_LOG") else {
        return false;
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let mut fields = line.split('\t');
            fields.next() == Some(ctx.run_name()) && fields.next() == Some(what)
        })
}

/// Hangs (until killed) the first time this run reaches `point`, when the input asks for it.
async fn hang_once(ctx: &Ctx, hang: Option<&str>, point: &str) {
    let marker = format!("hang:{point}");
    if hang == Some(point) && !seen(ctx, &marker) {
        effect(ctx, &marker);
        tokio::time::sleep(HANG).await;
    }
}

// ---- steps: a, b, c with kill points -------------------------------------------------------

#[derive(Deserialize)]
struct StepsInput {
    /// `inside:<step>` (after the step's side effect, before it completes) or
    /// `before:<step>` (between the previous step and this one).
    hang: Option<String>,
}

async fn steps(ctx: Ctx, input: StepsInput) -> anyhow::Result<Vec<String>> {
    let mut results = Vec::new();
    for name in ["a", "b", "c"] {
        hang_once(&ctx, input.hang.as_deref(), &format!("before:{name}")).await;
        let hang = input.hang.clone();
        let c = ctx.clone();
        let result: String = ctx
            .step(name, move || {
                let (ctx, hang) = (c.clone(), hang.clone());
                async move {
                    effect(&ctx, &format!("step:{name}"));
                    hang_once(&ctx, hang.as_deref(), &format!("inside:{name}")).await;
                    Ok(format!("{name} done"))
                }
            })
            .retry(RetryPolicy::none())
            .await?;
        results.push(result);
    }
    Ok(results)
}

// ---- echo ----------------------------------------------------------------------------------

async fn echo(ctx: Ctx, input: Value) -> anyhow::Result<Value> {
    let c = ctx.clone();
    let echoed: Value = ctx
        .step("echo", move || {
            let (ctx, input) = (c.clone(), input.clone());
            async move {
                effect(&ctx, "step:echo");
                Ok(json!({ "echo": input }))
            }
        })
        .await?;
    Ok(echoed)
}

// ---- approval: a wait for an event with a schema, optionally with a timeout ----------------

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Approval {
    approved: bool,
    by: String,
}

#[derive(Deserialize)]
struct ApprovalInput {
    event: String,
    timeout_ms: Option<u64>,
    /// `after-wait`: hang the first time the flow gets past the wait.
    hang: Option<String>,
    /// Take an event sent to the namespace before the run was created.
    #[serde(default)]
    include_earlier: bool,
}

async fn approval(ctx: Ctx, input: ApprovalInput) -> anyhow::Result<Value> {
    let c = ctx.clone();
    ctx.step("before", move || {
        let ctx = c.clone();
        async move {
            effect(&ctx, "step:before");
            Ok(())
        }
    })
    .await?;
    let mut wait = ctx
        .wait_for_event::<Approval>(&input.event)
        .question("Approve?");
    if input.include_earlier {
        wait = wait.include_earlier();
    }
    let got = match input.timeout_ms {
        Some(ms) => wait.timeout(Duration::from_millis(ms)).await?,
        None => Some(wait.await?),
    };
    // Plain code after the wait: runs on every attempt that gets here, and says what it saw.
    effect(&ctx, &format!("saw:{}", serde_json::to_string(&got)?));
    hang_once(&ctx, input.hang.as_deref(), "after-wait").await;
    let c = ctx.clone();
    ctx.step("after", move || {
        let ctx = c.clone();
        async move {
            effect(&ctx, "step:after");
            Ok(())
        }
    })
    .await?;
    Ok(json!({ "got": got }))
}

// ---- review: a question whose schema the web console's form must honour -------------------

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Channel {
    Email,
    Slack,
    None,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Review {
    /// Publish the draft?
    approve: bool,
    /// Your login, lowercase.
    #[schemars(regex(pattern = r"^[a-z]+$"), length(min = 2, max = 40))]
    reviewer: String,
    channel: Channel,
    /// US dollars, under 100 (a bound only the server checks: HTML's max is inclusive).
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 100))]
    budget: f64,
    #[serde(default)]
    notes: String,
}

async fn review(ctx: Ctx, _input: Value) -> anyhow::Result<Value> {
    let c = ctx.clone();
    let _: String = ctx
        .step("draft", move || {
            let ctx = c.clone();
            async move {
                effect(&ctx, "step:draft");
                Ok("a draft <b>in bold</b>".to_owned())
            }
        })
        .await?;
    // Markup that must reach a browser only as a download, never as a page.
    let page = "<script>document.title='pwned'</script><b>draft</b>";
    ctx.artifact("draft.html", cairn::ArtifactContent::new(page, "text/html"))
        .await?;
    let review = ctx
        .wait_for_event::<Review>(&format!("review-{}", ctx.run_name()))
        .question("Publish the draft?")
        .await?;
    let c = ctx.clone();
    let published = ctx
        .step("publish", move || {
            let (ctx, by) = (c.clone(), review.reviewer.clone());
            async move {
                effect(&ctx, "step:publish");
                Ok(json!({ "published": review.approve, "by": by }))
            }
        })
        .await?;
    Ok(published)
}

// ---- sleeper -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct SleepInput {
    ms: u64,
}

async fn sleeper(ctx: Ctx, input: SleepInput) -> anyhow::Result<()> {
    let c = ctx.clone();
    ctx.step("before", move || {
        let ctx = c.clone();
        async move {
            effect(&ctx, "step:before");
            Ok(())
        }
    })
    .await?;
    ctx.sleep("nap", Duration::from_millis(input.ms)).await?;
    let c = ctx.clone();
    ctx.step("after", move || {
        let ctx = c.clone();
        async move {
            effect(&ctx, "step:after");
            Ok(())
        }
    })
    .await?;
    Ok(())
}

// ---- fan-out -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct FanoutInput {
    n: u64,
}

#[derive(Serialize, Deserialize)]
struct SquareInput {
    i: u64,
}

async fn fanout(ctx: Ctx, input: FanoutInput) -> anyhow::Result<Vec<u64>> {
    let mut children = Vec::new();
    for i in 0..input.n {
        children.push(ctx.spawn::<u64, _>("square", &SquareInput { i }).await?);
    }
    ctx.join_all(&children).await
}

async fn square(ctx: Ctx, input: SquareInput) -> anyhow::Result<u64> {
    let c = ctx.clone();
    ctx.step("work", move || {
        let ctx = c.clone();
        let i = input.i;
        async move {
            effect(&ctx, &format!("work:{i}"));
            Ok(i * i)
        }
    })
    .await
}

// ---- looper: many short steps (cancellation while running) ---------------------------------

#[derive(Deserialize)]
struct LoopInput {
    n: u64,
    step_ms: u64,
}

async fn looper(ctx: Ctx, input: LoopInput) -> anyhow::Result<u64> {
    for i in 0..input.n {
        let c = ctx.clone();
        ctx.step("tick", move || {
            let ctx = c.clone();
            async move {
                effect(&ctx, &format!("tick:{i}"));
                tokio::time::sleep(Duration::from_millis(input.step_ms)).await;
                Ok(i)
            }
        })
        .await?;
    }
    Ok(input.n)
}

// ---- flaky: step-level retries -------------------------------------------------------------

#[derive(Deserialize)]
struct FlakyInput {
    /// The first `fail_times` tries fail with an ordinary (retryable) error.
    fail_times: u32,
    max_tries: u32,
    /// Fail with a permanent error instead (never retried).
    #[serde(default)]
    permanent: bool,
}

static TRIES: AtomicU32 = AtomicU32::new(0);

async fn flaky(ctx: Ctx, input: FlakyInput) -> anyhow::Result<u32> {
    let c = ctx.clone();
    ctx.step("flaky", move || {
        let ctx = c.clone();
        let try_number = TRIES.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            effect(&ctx, &format!("try:{try_number}"));
            if input.permanent {
                return Err(cairn::permanent(anyhow!(
                    "bad request: the service refused the input"
                )));
            }
            if try_number <= input.fail_times {
                return Err(anyhow!("transient failure on try {try_number}"));
            }
            Ok(try_number)
        }
    })
    .retry(RetryPolicy::exponential(
        input.max_tries,
        Duration::from_millis(20),
    ))
    .await
}

// ---- storm: many short steps, for kill storms ---------------------------------------------------

#[derive(Deserialize)]
struct StormInput {
    steps: usize,
    step_ms: u64,
}

/// Records `start` as each attempt enters, then runs `steps` steps of `step_ms` each, recording
/// every execution as `step:s<i>` as it begins (the side effect a kill may interrupt).
async fn storm(ctx: Ctx, input: StormInput) -> anyhow::Result<usize> {
    effect(&ctx, "start");
    for i in 0..input.steps {
        let c = ctx.clone();
        ctx.step(&format!("s{i}"), move || {
            let ctx = c.clone();
            async move {
                effect(&ctx, &format!("step:s{i}"));
                tokio::time::sleep(Duration::from_millis(input.step_ms)).await;
                Ok(i)
            }
        })
        .retry(RetryPolicy::none())
        .await?;
    }
    Ok(input.steps)
}

// ---- crasher: dies on every attempt --------------------------------------------------------

async fn crasher(ctx: Ctx, _input: Value) -> anyhow::Result<()> {
    effect(&ctx, "start");
    std::process::abort();
}

// ---- typed: strict input -------------------------------------------------------------------

#[derive(Deserialize)]
struct TypedInput {
    topic: String,
    count: u32,
}

async fn typed(ctx: Ctx, input: TypedInput) -> anyhow::Result<String> {
    effect(&ctx, "entered");
    Ok(format!("{} x{}", input.topic, input.count))
}

// ---- costly: usage recorded by steps -------------------------------------------------------

static COSTLY_TRIES: AtomicU32 = AtomicU32::new(0);

async fn costly(ctx: Ctx, _input: Value) -> anyhow::Result<()> {
    ctx.step("plan", || async {
        cairn::record_usage(Usage::llm("model-a", 100, 20, 0.25));
        Ok(())
    })
    .await?;
    // Two records in one step add up.
    ctx.step("draft", || async {
        cairn::record_usage(Usage::llm("model-a", 200, 40, 0.5));
        cairn::record_usage(Usage::llm("model-b", 10, 5, 0.25));
        Ok(())
    })
    .await?;
    // A step that records nothing.
    ctx.step("free", || async { Ok(()) }).await?;
    // The failed try was paid for too.
    ctx.step("retried", || async {
        cairn::record_usage(Usage::llm("model-a", 1000, 100, 0.125));
        if COSTLY_TRIES.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(anyhow!("rate limited"));
        }
        Ok(())
    })
    .retry(RetryPolicy::exponential(2, Duration::from_millis(10)))
    .await?;
    Ok(())
}

// ---- files: scratch space in /tmp and a file mounted from the Flow's volumes --------------------

#[derive(Deserialize)]
struct FilesInput {
    /// Megabytes to write to /tmp (and read back).
    scratch_mb: u64,
    /// A file to read, e.g. one of a mounted ConfigMap.
    read: String,
}

async fn files(ctx: Ctx, input: FilesInput) -> anyhow::Result<Value> {
    ctx.step("files", move || {
        let read = input.read.clone();
        async move {
            let scratch = std::env::temp_dir().join("cairn-test-scratch");
            let megabyte = vec![7u8; 1 << 20];
            let mut file = std::fs::File::create(&scratch)?;
            for _ in 0..input.scratch_mb {
                file.write_all(&megabyte)?;
            }
            file.sync_all()?;
            let scratch_bytes = std::fs::read(&scratch)?.len();
            std::fs::remove_file(&scratch)?;
            let content =
                std::fs::read_to_string(&read).map_err(|e| anyhow!("cannot read {read}: {e}"))?;
            Ok(json!({ "scratch_bytes": scratch_bytes, "read": content }))
        }
    })
    .await
}

// ---- configured: fails until its configuration is set, then a retry succeeds ---------------

/// Prepares (a step that succeeds), then calls a service with `CAIRN_TEST_API_KEY`: a
/// permanent failure while it is unset, as a missing credential is. Returns the key.
async fn configured(ctx: Ctx, _input: Value) -> anyhow::Result<String> {
    let c = ctx.clone();
    ctx.step("prepare", move || {
        let ctx = c.clone();
        async move {
            effect(&ctx, "prepare");
            Ok(())
        }
    })
    .await?;
    let c = ctx.clone();
    ctx.step("call", move || {
        let ctx = c.clone();
        async move {
            effect(&ctx, "call");
            std::env::var("CAIRN_TEST_API_KEY")
                .map_err(|_| cairn::permanent(anyhow!("CAIRN_TEST_API_KEY is not set")))
        }
    })
    .await
}

// ---- secretive: a sensitive step, replayed after a kill ------------------------------------

#[derive(Deserialize)]
struct SecretiveInput {
    secret: String,
    hang: Option<String>,
    /// Fails (permanently) after the first two steps while `CAIRN_TEST_API_KEY` is unset.
    #[serde(default)]
    configured: bool,
}

/// Keeps a credential in a sensitive step, then (after an optional kill point) uses it: the
/// replay must open the sealed value. Also stores a plain value shaped like Cairn's own forms.
async fn secretive(ctx: Ctx, input: SecretiveInput) -> anyhow::Result<Value> {
    let c = ctx.clone();
    let secret = input.secret.clone();
    let credentials: Value = ctx
        .step("credentials", move || {
            let (ctx, secret) = (c.clone(), secret.clone());
            async move {
                effect(&ctx, "credentials");
                Ok(json!({ "api_key": secret }))
            }
        })
        .sensitive()
        .await?;
    let tricky: Value = ctx
        .step("tricky", || async {
            Ok(json!({ "$cairn": "sealed", "looks": "like ours" }))
        })
        .await?;
    hang_once(&ctx, input.hang.as_deref(), "before:use").await;
    if input.configured && std::env::var_os("CAIRN_TEST_API_KEY").is_none() {
        return Err(cairn::permanent(anyhow!("CAIRN_TEST_API_KEY is not set")));
    }
    let key = credentials["api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let used: String = ctx
        .step("use", move || {
            let key = key.clone();
            async move { Ok(format!("called with a key of {} characters", key.len())) }
        })
        .await?;
    Ok(json!({ "used": used, "tricky": tricky }))
}

// ---- spender: paid steps, optionally around a child that pays too --------------------------

#[derive(Deserialize, Serialize)]
struct SpenderInput {
    /// The cost of each step before the child, in US dollars.
    #[serde(default)]
    before: Vec<f64>,
    /// The child's steps (a `spender` of its own), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    child: Option<Vec<f64>>,
    #[serde(default)]
    after: Vec<f64>,
}

/// Steps `pay`, `pay#2`, ... each recording its cost and the effect `pay:<n>`, so a test
/// sees a budget stop the run between them and that nothing is paid twice.
async fn spender(ctx: Ctx, input: SpenderInput) -> anyhow::Result<f64> {
    let pay = |n: usize, usd: f64| {
        let (ctx, c) = (ctx.clone(), ctx.clone());
        async move {
            ctx.step("pay", move || {
                let ctx = c.clone();
                async move {
                    effect(&ctx, &format!("pay:{n}"));
                    cairn::record_usage(Usage::llm("model-a", 10, 10, usd));
                    Ok(usd)
                }
            })
            .await
        }
    };
    let (mut total, mut n) = (0.0, 0);
    for usd in input.before {
        n += 1;
        total += pay(n, usd).await?;
    }
    if let Some(steps) = input.child {
        let child = ctx
            .spawn::<f64, _>(
                "spender",
                &SpenderInput {
                    before: steps,
                    child: None,
                    after: vec![],
                },
            )
            .await?;
        total += ctx.join(&child).await?;
    }
    for usd in input.after {
        n += 1;
        total += pay(n, usd).await?;
    }
    Ok(total)
}

// ---- big_result: a step result far larger than a checkpoint row (kept in the artifact store) --

#[derive(Deserialize)]
struct BigResultInput {
    /// The step returns a text of this many megabytes (`big_text`).
    mb: f64,
    /// `after:big`: hang the first time the run gets past the step (it is checkpointed).
    hang: Option<String>,
    /// The step's result is sensitive (sealed).
    #[serde(default)]
    sensitive: bool,
    /// A path: each execution of the step records `waiting:big`, then blocks until the file
    /// `<path>.<attempt>` exists, so a test can do something while the step is in flight.
    release: Option<String>,
}

/// One step returning a big text (recording `step:big`), then an optional kill point; returns
/// the text's length, hash and first line as the replay (or the first run) saw it.
async fn big_result(ctx: Ctx, input: BigResultInput) -> anyhow::Result<Value> {
    let len = (input.mb * (1 << 20) as f64) as usize;
    let c = ctx.clone();
    let release = input.release.clone();
    let mut step = ctx
        .step("big", move || {
            let (ctx, release) = (c.clone(), release.clone());
            async move {
                effect(&ctx, "step:big");
                if let Some(release) = release {
                    effect(&ctx, "waiting:big");
                    let file = format!("{release}.{}", ctx.attempt());
                    let deadline = tokio::time::Instant::now() + HANG;
                    while !std::path::Path::new(&file).exists() {
                        if tokio::time::Instant::now() > deadline {
                            return Err(anyhow!("{file} never appeared"));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Ok(big_text(len))
            }
        })
        .retry(RetryPolicy::none());
    if input.sensitive {
        step = step.sensitive();
    }
    let text: String = step.await?;
    hang_once(&ctx, input.hang.as_deref(), "after:big").await;
    Ok(json!({
        "len": text.len(),
        "fnv": fnv1a(text.as_bytes()),
        "head": text.lines().next().unwrap_or_default(),
    }))
}

// ---- stores_artifact: objects stored on purpose, then read back ----------------------------

#[derive(Deserialize)]
struct StoredItem {
    name: String,
    text: String,
}

#[derive(Deserialize)]
struct StoresArtifactInput {
    items: Vec<StoredItem>,
    /// `after:artifacts`: hang the first time the run has stored them all.
    hang: Option<String>,
}

/// Stores each item's text (`text/plain; charset=utf-8`) with `ctx.artifact`, recording
/// `stored:<name>` each time a process gets past it (a replay too), then reads them all back.
/// Returns the artifacts and what was read.
async fn stores_artifact(ctx: Ctx, input: StoresArtifactInput) -> anyhow::Result<Value> {
    let mut artifacts = Vec::new();
    for item in input.items {
        let artifact = ctx.artifact(&item.name, item.text).await?;
        effect(&ctx, &format!("stored:{}", item.name));
        artifacts.push(artifact);
    }
    hang_once(&ctx, input.hang.as_deref(), "after:artifacts").await;
    let mut read = Vec::new();
    for artifact in &artifacts {
        let bytes = ctx.read_artifact(artifact).await?;
        read.push(String::from_utf8(bytes.to_vec())?);
    }
    Ok(json!({ "artifacts": artifacts, "read": read }))
}

#[tokio::main]
async fn main() {
    Runner::new()
        .flow("steps", steps)
        .flow("echo", echo)
        .flow("approval", approval)
        .flow("review", review)
        .flow("sleeper", sleeper)
        .flow("fanout", fanout)
        .flow("square", square)
        .flow("looper", looper)
        .flow("flaky", flaky)
        .flow("storm", storm)
        .flow("crasher", crasher)
        .flow("typed", typed)
        .flow("costly", costly)
        .flow("files", files)
        .flow("configured", configured)
        .flow("secretive", secretive)
        .flow("spender", spender)
        .flow("big_result", big_result)
        .flow("stores_artifact", stores_artifact)
        .run()
        .await
}
