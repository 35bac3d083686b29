//! Requests/s and latency of `LlmClient` against the in-process sim server,
//! side by side with reqwest (one shared client), a bare hyper-util pool and
//! a fresh connection per request (the floor). Every client parses the body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reasonq::llm::{ChatResponse, LlmClient, LlmConfig, RateLimits};
use reasonq::sim::{SimConfig, SimServer};
use tokio::runtime::Runtime;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ours,
    Reqwest,
    Bare,
    Fresh,
}

const KINDS: [Kind; 4] = [Kind::Ours, Kind::Reqwest, Kind::Bare, Kind::Fresh];
const CONCURRENCY: [usize; 3] = [1, 16, 64];

struct Env {
    _server: Option<SimServer>,
    url: String,
    addr: std::net::SocketAddr,
    body: Bytes,
    ours: LlmClient,
    reqwest: reqwest::Client,
    bare: Client<HttpConnector, Full<Bytes>>,
}

impl Env {
    /// Against `LLM_BENCH_URL` (an external server such as nginx, see benches/nginx.sh) when
    /// set, else against the in-process sim server in fast mode.
    async fn new() -> Env {
        let (server, base_url, addr) = match std::env::var("LLM_BENCH_URL") {
            Ok(base) => {
                let uri: http::Uri = base.parse().expect("LLM_BENCH_URL");
                let authority = uri.authority().expect("host:port").as_str().to_string();
                let addr = tokio::net::lookup_host(authority)
                    .await
                    .expect("resolve")
                    .next()
                    .expect("address");
                (None, base.trim_end_matches('/').to_string(), addr)
            }
            Err(_) => {
                let server = SimServer::start(SimConfig {
                    record_requests: false,
                    fast: true,
                    ..SimConfig::default()
                })
                .await
                .expect("sim server");
                let (base, addr) = (server.base_url(), server.addr());
                (Some(server), base, addr)
            }
        };
        let url = format!("{base_url}/chat/completions");
        let ours = LlmClient::new(LlmConfig {
            base_url: base_url.clone(),
            limits: RateLimits {
                max_concurrency: 1024,
                ..RateLimits::default()
            },
            ..LlmConfig::default()
        })
        .expect("client");
        let body = ours
            .prepare_body(&serde_json::json!({
                "messages": [{"role": "user", "content": "What is 2 + 2? Answer briefly."}],
                "temperature": 0
            }))
            .expect("body");
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let bare = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(http);
        Env {
            addr,
            _server: server,
            url,
            body,
            ours,
            reqwest: reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .expect("reqwest"),
            bare,
        }
    }

    fn request(&self) -> http::Request<Full<Bytes>> {
        // A bare connection sends no Host header by itself, and real servers require one.
        http::Request::post(&self.url)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(self.body.clone()))
            .expect("request")
    }

    async fn one(&self, kind: Kind) {
        let parsed: ChatResponse = match kind {
            Kind::Ours => {
                let out = self.ours.chat_bytes(self.body.clone()).await.expect("ours");
                out.response
            }
            Kind::Reqwest => {
                let resp = self
                    .reqwest
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .body(self.body.clone())
                    .send()
                    .await
                    .expect("reqwest send");
                serde_json::from_slice(&resp.bytes().await.expect("reqwest body")).expect("json")
            }
            Kind::Bare => {
                let resp = self.bare.request(self.request()).await.expect("bare send");
                let b = resp.into_body().collect().await.expect("bare body");
                serde_json::from_slice(&b.to_bytes()).expect("json")
            }
            Kind::Fresh => {
                let tcp = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .expect("tcp");
                tcp.set_nodelay(true).expect("nodelay");
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .expect("handshake");
                tokio::spawn(conn);
                let resp = send.send_request(self.request()).await.expect("fresh send");
                let b = resp.into_body().collect().await.expect("fresh body");
                serde_json::from_slice(&b.to_bytes()).expect("json")
            }
        };
        assert!(parsed.content().is_some());
    }
}

/// `n` requests over `conc` tasks; returns wall time and per-request latencies.
async fn run(env: &Arc<Env>, kind: Kind, conc: usize, n: u64) -> (Duration, Vec<Duration>) {
    let tasks = (conc as u64).min(n).max(1);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let env = Arc::clone(env);
            let count = n / tasks + u64::from(t < n % tasks);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let t0 = Instant::now();
                    env.one(kind).await;
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n as usize);
    for h in handles {
        all.extend(h.await.expect("task"));
    }
    (start.elapsed(), all)
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Process CPU time (user + system) from /proc/self/stat, assuming the usual
/// 100 ticks per second. Less sensitive to other load on the machine than
/// wall time; includes the in-process server, which is the same for all.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

/// Fixed-count runs printing req/s and p50/p99 as a markdown table. Rounds
/// interleave the clients so background load hits them alike; req/s is the
/// median round, latencies are pooled over all rounds.
fn report(rt: &Runtime, env: &Arc<Env>) {
    let n = env_or("LLM_BENCH_N", 10_000);
    let rounds = env_or("LLM_BENCH_ROUNDS", 3);
    println!("\nload average before: {}", loadavg().trim());
    println!(
        "\n| client | concurrency | req/s (median of {rounds}) | p50 ms | p99 ms | CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|");
    let mut rps = std::collections::HashMap::new();
    for conc in CONCURRENCY {
        let mut per_kind: Vec<(Vec<f64>, Vec<Duration>, Duration)> =
            vec![Default::default(); KINDS.len()];
        for _ in 0..rounds {
            for (i, kind) in KINDS.into_iter().enumerate() {
                let count = if matches!(kind, Kind::Fresh) {
                    n / 4
                } else {
                    n
                };
                rt.block_on(run(env, kind, conc, 200)); // warm the pools
                let cpu0 = cpu_time();
                let (wall, lat) = rt.block_on(run(env, kind, conc, count));
                per_kind[i].2 += cpu_time().saturating_sub(cpu0);
                per_kind[i].0.push(count as f64 / wall.as_secs_f64());
                per_kind[i].1.extend(lat);
            }
        }
        for (kind, (mut r, mut lat, cpu)) in KINDS.into_iter().zip(per_kind) {
            r.sort_by(f64::total_cmp);
            lat.sort();
            let median = r[r.len() / 2];
            rps.insert((format!("{kind:?}"), conc), median);
            println!(
                "| {kind:?} | {conc} | {median:.0} | {:.3} | {:.3} | {:.1} |",
                pct(&lat, 0.50),
                pct(&lat, 0.99),
                cpu.as_secs_f64() * 1e6 / lat.len() as f64
            );
        }
    }
    println!("\n| concurrency | ours/reqwest | ours/bare |");
    println!("|---|---|---|");
    for conc in CONCURRENCY {
        let get = |k: &str| rps[&(k.to_owned(), conc)];
        println!(
            "| {conc} | {:.2} | {:.3} |",
            get("Ours") / get("Reqwest"),
            get("Ours") / get("Bare")
        );
    }
    let m = env.ours.metrics();
    println!(
        "\nours, metrics histogram over the whole run: {} requests, {} connections, reuse {:.4}, p50 {} us, p95 {} us, p99 {} us",
        m.requests_sent,
        m.connections_opened,
        m.reuse_ratio,
        m.latency_p50_us,
        m.latency_p95_us,
        m.latency_p99_us
    );
    println!("load average after: {}", loadavg().trim());
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let env = Arc::new(rt.block_on(Env::new()));
    // Warm every client once so the first benchmark does not pay for it.
    for kind in KINDS {
        rt.block_on(run(&env, kind, 16, 2_000));
    }
    for conc in CONCURRENCY {
        let mut g = c.benchmark_group(format!("llm_client/c{conc}"));
        g.throughput(Throughput::Elements(1))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for kind in KINDS {
            g.bench_with_input(
                BenchmarkId::from_parameter(format!("{kind:?}")),
                &kind,
                |b, &kind| {
                    b.to_async(&rt).iter_custom(|iters| {
                        let env = Arc::clone(&env);
                        async move { run(&env, kind, conc, iters).await.0 }
                    })
                },
            );
        }
        g.finish();
    }
    if std::env::var_os("LLM_BENCH_NO_REPORT").is_none() {
        report(&rt, &env);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
