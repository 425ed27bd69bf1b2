//! Heap allocations per gateway request (a benchmark, not a test). Run with
//! `cargo run --release -p weaver-bench-allocs`; `bench/run` runs it too.
//!
//! The real gateway (`weaver_gateway::cli::start`, standalone, one `openai`
//! channel) runs in-process on its own tokio runtime with one worker thread.
//! A hand-written keep-alive HTTP/1.1 upstream on a separate thread answers
//! every request with one fixed OpenAI answer (a `chat.completion` with usage,
//! or an SSE stream of 11 chunks, a usage chunk and `[DONE]`, chunked), and a
//! raw keep-alive client on the main thread sends pre-built requests one at a
//! time and reads each answer to its end. After a warm-up (connection pools,
//! metric label sets and maps populated) the counters are reset and N more
//! requests are sent; the program prints allocations and bytes per request,
//! for plain and then for streamed requests. With `--rate-limits` the key
//! has every rate limit on (high enough that nothing is refused), so the
//! figure includes admission, settling and the `x-ratelimit-*` headers. With
//! `--budgets` the key has a budget and so has its namespace (a
//! NamespacePolicy), both far too large to run out: the figure includes both
//! reservations and settlements (and the ledger sync's share). With
//! `--store URL` (`sqlite://PATH` or `postgres://...`) every request is also
//! metered into that usage store: the figure then includes building the
//! record and the batch writer's share (it runs on the same worker). With
//! `--three-channels` the model has three channels (to the same upstream)
//! under a RoutingPolicy (`--strategy NAME`, default `weighted`), so the
//! figure includes a routing pick among several candidates.
//!
//! What is counted: every `alloc`, `alloc_zeroed` and `realloc` (one each; the
//! bytes are the requested size, a `realloc` its new size) made on a thread of
//! the gateway's runtime — its worker, which runs the server, the handlers,
//! the upstream client's connection tasks, timers and I/O, and its blocking
//! pool, which the request path should not use (shown separately if it does).
//! Frees are not counted.
//!
//! Why a thread flag: the client, the upstream and the gateway share one
//! process and one global allocator. The runtime's `on_thread_start` hook
//! marks each of the gateway's threads in a thread-local, and the allocator
//! counts only on marked threads. The client (main thread) and the upstream
//! (its own thread and single-threaded runtime) are never marked, so what they
//! allocate does not show, however they are written — and the figure does not
//! depend on machine load, only on the gateway's code.
//!
//! It is a package of its own, not a bench of weaver-e2e, because a global
//! allocator is an `unsafe impl` and the workspace forbids unsafe code; see
//! bench/allocs/Cargo.toml. Of the gateway it uses only `cli::{Args, start}`,
//! `Started::addr` and `Started::wait`, so it survives internal restructuring.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use weaver_gateway::cli::{Args, start};

/// Requests per kind before counting, and counted.
const WARM_UP: u64 = 2_000;
const MEASURED: u64 = 20_000;
/// Long enough for the gateway to finish a request after its last byte is
/// sent (the usage record is made when the response body is dropped), and
/// for the usage writer's batch interval (200 ms) to pass.
const SETTLE: Duration = Duration::from_millis(500);
const CLIENT_KEY: &str = "lw-bench-allocs-key-0123456789abcdef";

// ---------------------------------------------------------------- counting

/// Allocations and bytes counted on one kind of thread.
struct Tally {
    allocs: AtomicU64,
    bytes: AtomicU64,
}

impl Tally {
    const fn new() -> Self {
        Self { allocs: AtomicU64::new(0), bytes: AtomicU64::new(0) }
    }

    fn take(&self) -> (u64, u64) {
        (self.allocs.swap(0, Ordering::Relaxed), self.bytes.swap(0, Ordering::Relaxed))
    }
}

static WORKER: Tally = Tally::new();
static BLOCKING: Tally = Tally::new();

thread_local! {
    /// Where this thread's allocations are counted; `None` (the client, the
    /// upstream, the main thread) is not counted. Const-initialised and
    /// without a destructor, so reading it never allocates.
    static COUNT_INTO: Cell<Option<&'static Tally>> = const { Cell::new(None) };
}

fn count(size: usize) {
    if let Ok(Some(tally)) = COUNT_INTO.try_with(Cell::get) {
        tally.allocs.fetch_add(1, Ordering::Relaxed);
        tally.bytes.fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// The system allocator, counting on marked threads.
struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// SAFETY: every method passes its arguments unchanged to `System` and returns
// its result, so `System` upholds the `GlobalAlloc` contract. The counting
// only touches atomics and a const thread-local, and never allocates.
#[expect(unsafe_code, reason = "a global allocator is an unsafe impl; this one only delegates to System")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

// ---------------------------------------------------------------- the run

fn main() -> anyhow::Result<()> {
    let options: Vec<String> = std::env::args().skip(1).collect();
    let rate_limits = options.iter().any(|a| a == "--rate-limits");
    let budgets = options.iter().any(|a| a == "--budgets");
    let three = options.iter().any(|a| a == "--three-channels");
    let strategy = match options.iter().position(|a| a == "--strategy") {
        Some(i) => options.get(i + 1).context("--strategy needs a name")?.clone(),
        None => "weighted".to_owned(),
    };
    let routing = three.then_some(strategy.as_str());
    let store = match options.iter().position(|a| a == "--store") {
        Some(i) => options.get(i + 1).context("--store needs a URL")?.clone(),
        None => "off".to_owned(),
    };
    let data_dir = tempfile::tempdir()?;
    let upstream = Upstream::start()?;
    let manifests = tempfile::tempdir()?;
    std::fs::write(manifests.path().join("bench.yaml"), manifests_yaml(upstream.addr, rate_limits, budgets, routing))?;
    let args = Args::try_parse_from([
        "weaver-gateway",
        "--manifests",
        &manifests.path().to_string_lossy(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        // Off by default: the relay's own allocations.
        "--store",
        &store,
        "--data-dir",
        &data_dir.path().to_string_lossy(),
        // The folder watcher would tick (and allocate) on the worker twice a
        // second; it has nothing to do with requests.
        "--reload-interval",
        "1h",
    ])?;
    // Every thread the runtime starts is counted (its blocking pool too); the
    // worker is told apart because only workers park.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gateway")
        .on_thread_start(|| COUNT_INTO.set(Some(&BLOCKING)))
        .on_thread_park(|| COUNT_INTO.set(Some(&WORKER)))
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let started = runtime.block_on(start(args, async {
        let _ = stopped.await;
    }))?;

    let mut client = Client::connect(started.addr)?;
    println!(
        "Heap allocations on the gateway's threads (1 worker), per request: {MEASURED} sequential requests \
         on one keep-alive connection after {WARM_UP} to warm up; {}, fixed loopback upstream{}{}{}",
        match routing {
            Some(strategy) => format!("three openai channels under a {strategy} RoutingPolicy"),
            None => "openai channel".to_owned(),
        },
        if rate_limits { "; key with rate limits" } else { "" },
        if budgets { "; key and namespace budgets" } else { "" },
        if store == "off" {
            String::new()
        } else {
            format!("; metered into {}", store.split(':').next().unwrap_or(""))
        }
    );
    for (kind, body) in [("plain", plain_request_body()), ("streamed", streamed_request_body())] {
        let request = http_request(started.addr, &body);
        let streamed = kind == "streamed";
        for _ in 0..WARM_UP {
            client.round_trip(&request, streamed)?;
        }
        std::thread::sleep(SETTLE);
        WORKER.take();
        BLOCKING.take();
        for _ in 0..MEASURED {
            client.round_trip(&request, streamed)?;
        }
        std::thread::sleep(SETTLE);
        let (worker, worker_bytes) = WORKER.take();
        let (blocking, blocking_bytes) = BLOCKING.take();
        let per = |n: u64| n as f64 / MEASURED as f64;
        println!(
            "allocations per {kind} request: {:.1} ({:.0} bytes)",
            per(worker + blocking),
            per(worker_bytes + blocking_bytes)
        );
        if blocking > 0 {
            println!("  of which on blocking-pool threads: {:.1}", per(blocking));
        }
    }

    drop(client);
    let _ = stop.send(());
    runtime.block_on(started.wait())?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    upstream.stop()
}

/// The bench's manifests; with `routing`, three channels under a policy of
/// that strategy instead of one.
fn manifests_yaml(upstream: SocketAddr, rate_limits: bool, budgets: bool, routing: Option<&str>) -> String {
    let limits = if rate_limits {
        "rateLimit: {requestsPerMinute: 1000000000, tokensPerMinute: 1000000000000, maxConcurrent: 1000}"
    } else {
        ""
    };
    let (budget, namespace_policy) = if budgets {
        (
            r#"budget: {amount: "1000000", period: total}"#,
            "---\napiVersion: llmweaver.io/v1alpha1\nkind: NamespacePolicy\nmetadata: {name: default, namespace: bench}\n\
             spec: {budget: {amount: \"1000000\", period: total}}\n",
        )
    } else {
        ("", "")
    };
    let channel = |name: &str| {
        format!(
            r#"---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: {name}, namespace: bench}}
spec:
  provider: openai
  baseUrl: http://{upstream}/v1
  credentials: {{secretRef: {{name: upstream-creds}}}}
  models:
    - name: gpt-4o-mini
      upstreamModel: gpt-4o-mini-2024-07-18
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
"#
        )
    };
    let (channels, policy) = match routing {
        None => (channel("openai"), String::new()),
        Some(strategy) => (
            ["openai-a", "openai-b", "openai-c"].map(channel).concat(),
            format!(
                "---\napiVersion: llmweaver.io/v1alpha1\nkind: RoutingPolicy\nmetadata: {{name: bench, namespace: bench}}\n\
                 spec: {{models: [gpt-4o-mini], channels: [{{name: openai-a}}, {{name: openai-b}}, {{name: openai-c}}], \
                 strategy: {strategy}}}\n"
            ),
        ),
    };
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: upstream-creds, namespace: bench}}
stringData: {{apiKey: sk-bench-upstream-0123456789abcdef}}
{channels}{policy}---
apiVersion: v1
kind: Secret
metadata: {{name: client-key, namespace: bench}}
stringData: {{apiKey: {CLIENT_KEY}}}
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {{name: bench, namespace: bench}}
spec:
  secretRef: {{name: client-key}}
  allowedModels: ["gpt-4o-*"]
  {limits}
  {budget}
{namespace_policy}"#
    )
}

// ---------------------------------------------------------------- the client

const MESSAGES: &str = r#""messages":[{"role":"system","content":"You are a helpful assistant. Answer in one short sentence."},{"role":"user","content":"Write a one-line greeting for the release notes of a Kubernetes-native LLM gateway."}],"temperature":0.7,"max_tokens":64,"user":"bench-user-0001""#;

fn plain_request_body() -> String {
    format!(r#"{{"model":"gpt-4o-mini",{MESSAGES}}}"#)
}

fn streamed_request_body() -> String {
    format!(r#"{{"model":"gpt-4o-mini","stream":true,{MESSAGES}}}"#)
}

fn http_request(gateway: SocketAddr, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {gateway}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\nAccept: application/json\r\nUser-Agent: weaver-bench-allocs/0.1\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One keep-alive connection; reads each answer completely (Content-Length,
/// or chunked up to the terminating zero-size chunk).
struct Client {
    conn: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self { conn: BufReader::with_capacity(64 * 1024, stream), line: String::new(), body: Vec::new() })
    }

    fn read_line(&mut self) -> anyhow::Result<&str> {
        self.line.clear();
        anyhow::ensure!(self.conn.read_line(&mut self.line)? > 0, "the gateway closed the connection");
        Ok(&self.line)
    }

    fn round_trip(&mut self, request: &[u8], streamed: bool) -> anyhow::Result<()> {
        self.conn.get_mut().write_all(request)?;
        let status = self.read_line()?.split(' ').nth(1).unwrap_or_default().to_owned();
        let (mut length, mut chunked) = (None, false);
        loop {
            let line = self.read_line()?;
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        self.body.clear();
        if chunked {
            loop {
                let size = self.read_line()?;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
                    .with_context(|| format!("bad chunk size line {size:?}"))?;
                if size == 0 {
                    while self.read_line()? != "\r\n" {}
                    break;
                }
                let start = self.body.len();
                self.body.resize(start + size, 0);
                self.conn.read_exact(&mut self.body[start..])?;
                anyhow::ensure!(self.read_line()? == "\r\n", "chunk not followed by CRLF");
            }
        } else {
            let length = length.context("an answer with neither Content-Length nor chunked encoding")?;
            self.body.resize(length, 0);
            self.conn.read_exact(&mut self.body)?;
        }
        let text = String::from_utf8_lossy(&self.body);
        anyhow::ensure!(status == "200", "the gateway answered {status}: {text}");
        anyhow::ensure!(!streamed || text.trim_end().ends_with("data: [DONE]"), "stream not complete: {text}");
        Ok(())
    }
}

// ---------------------------------------------------------------- the upstream

/// A minimal OpenAI stand-in on its own thread and runtime: keep-alive
/// HTTP/1.1, one fixed answer per kind, written in one piece.
struct Upstream {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Upstream {
    fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new().name("upstream".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(serve_upstream(listener, stopped))
        })?;
        Ok(Self { addr, stop, thread })
    }

    fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.thread.join().map_err(|_| anyhow::anyhow!("the upstream thread panicked"))??;
        Ok(())
    }
}

async fn serve_upstream(listener: std::net::TcpListener, mut stopped: oneshot::Receiver<()>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let answers = Arc::new(Answers { plain: plain_answer(), streamed: streamed_answer() });
    loop {
        tokio::select! {
            _ = &mut stopped => return Ok(()),
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                stream.set_nodelay(true)?;
                // A broken connection ends only itself; the client's check fails loudly.
                tokio::spawn(upstream_connection(stream, answers.clone()));
            }
        }
    }
}

struct Answers {
    plain: Vec<u8>,
    streamed: Vec<u8>,
}

async fn upstream_connection(stream: tokio::net::TcpStream, answers: Arc<Answers>) -> std::io::Result<()> {
    let mut conn = tokio::io::BufReader::new(stream);
    let (mut line, mut body) = (String::new(), Vec::new());
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(std::io::Error::other)?;
            }
        }
        body.resize(length, 0);
        conn.read_exact(&mut body).await?;
        const STREAM: &[u8] = br#""stream":true"#;
        let streamed = body.windows(STREAM.len()).any(|w| w == STREAM);
        conn.get_mut().write_all(if streamed { &answers.streamed } else { &answers.plain }).await?;
    }
}

const ID: &str = "chatcmpl-BbenchAllocs7Qm2xWc9Lr4TzYp";
const CREATED: u64 = 1_748_000_000;
const UPSTREAM_MODEL: &str = "gpt-4o-mini-2024-07-18";
const RESPONSE_HEADERS: &str = "openai-organization: org-bench\r\nopenai-processing-ms: 312\r\n\
     openai-version: 2020-10-01\r\nx-request-id: req_5f0c2a9d3b7e4e1c8a6d2f4b9e0a1c3d\r\n\
     x-ratelimit-remaining-requests: 9999\r\nx-ratelimit-remaining-tokens: 199968\r\n";
const USAGE: &str = r#"{"prompt_tokens":41,"completion_tokens":10,"total_tokens":51,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#;
const PIECES: [&str; 9] = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"];

fn plain_answer() -> Vec<u8> {
    let content: String = PIECES.concat();
    let body = format!(
        r#"{{"id":"{ID}","object":"chat.completion","created":{CREATED},"model":"{UPSTREAM_MODEL}","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{USAGE},"service_tier":"default","system_fingerprint":"fp_7a53abb7a2"}}"#
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{RESPONSE_HEADERS}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A role chunk, nine content chunks, a finish chunk, the usage chunk and
/// `[DONE]`, each event in its own HTTP chunk.
fn streamed_answer() -> Vec<u8> {
    let chunk = |choices: &str, usage: &str| {
        format!(
            r#"data: {{"id":"{ID}","object":"chat.completion.chunk","created":{CREATED},"model":"{UPSTREAM_MODEL}","service_tier":"default","system_fingerprint":"fp_7a53abb7a2","choices":{choices},"usage":{usage}}}"#
        ) + "\n\n"
    };
    let delta = |delta: &str, finish: &str| {
        format!(r#"[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]"#)
    };
    let mut events = vec![chunk(&delta(r#"{"role":"assistant","content":"","refusal":null}"#, "null"), "null")];
    events.extend(PIECES.iter().map(|p| chunk(&delta(&format!(r#"{{"content":"{p}"}}"#), "null"), "null")));
    events.push(chunk(&delta("{}", r#""stop""#), "null"));
    events.push(chunk("[]", USAGE));
    events.push("data: [DONE]\n\n".to_owned());
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\
         {RESPONSE_HEADERS}\r\n"
    );
    for event in events {
        answer += &format!("{:x}\r\n{event}\r\n", event.len());
    }
    answer += "0\r\n\r\n";
    answer.into_bytes()
}
