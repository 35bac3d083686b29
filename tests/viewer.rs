//! The results viewer through the real binary: `reasonq view` over a database filled by a
//! batch (every page and filter, a prompt with HTML shown as text, the files, refusals),
//! the same pages inside `reasonq serve` with its key (login cookie, confirmed actions),
//! and a real browser (headless Chromium) that renders each page and runs no script from
//! a prompt.

mod support;

use std::process::{Child, Stdio};

use reasonq::sim::{Fault, Reply, SimConfig};
use serde_json::Value;
use support::Env;

/// The prompt a hostile line carries: a script and an event handler that would mark the
/// page if the browser ran them.
const HOSTILE: &str = "<script>document.title='pwned'</script><img src=x \
                       onerror=\"document.body.setAttribute('data-pwned','1')\"> what is 2+2?";
const BATCH: &str = "viewed";

/// A running `reasonq view` or `reasonq serve`, killed when dropped.
struct Running {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Starts `reasonq ARGS` and waits for the `http://` address it prints.
    fn start(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Running {
        let mut cmd = env.command(args);
        cmd.envs(vars.iter().copied());
        let (child, address, _log) = support::spawn_serving(cmd);
        let base = address
            .trim_end_matches("/v1")
            .trim_end_matches('/')
            .to_string();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Running { child, base, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path`: status, headers and body text.
    async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        self.send(self.http.get(self.url(path))).await
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }

    /// GET `path`, which must answer 200 with HTML under the CSP.
    async fn page(&self, path: &str) -> String {
        let (status, headers, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        body
    }
}

/// A database with one batch of `n` lines: line 3 is hostile, lines 5 and 6 fail for good
/// (a 400, `bad_request`), line 7 contains a needle for the text search.
async fn filled(n: usize) -> Env {
    let env = Env::start(SimConfig::default()).await;
    env.server
        .set_responder(std::sync::Arc::new(|body: &Value| {
            let prompt = body["messages"][0]["content"].as_str().unwrap_or_default();
            if prompt.contains("fails") {
                return Reply::Fault(Fault::Status {
                    status: 400,
                    code: Some("invalid_prompt".into()),
                    message: "the prompt is not allowed".into(),
                });
            }
            Reply::Text(format!("answer to: {prompt}"))
        }));
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let question = match i {
                3 => HOSTILE.to_string(),
                5 | 6 => format!("this one fails ({i})"),
                7 => "where is the zebra-needle?".to_string(),
                _ => format!("question number {i}"),
            };
            serde_json::json!({"id": format!("q{i:03}"), "question": question,
                               "params": {"temperature": 0}})
            .to_string()
        })
        .collect();
    env.write_input("in.jsonl", &lines);
    let out = env
        .run(&["batch", "in.jsonl", "--batch", BATCH, "-o", "out.jsonl"])
        .await;
    assert!(
        out.status.success() || out.status.code() == Some(3),
        "{}",
        support::stderr(&out)
    );
    env
}

/// The custom ids of the rows of a lines page, in order.
fn row_ids(page: &str) -> Vec<String> {
    page.split("<tr class=\"")
        .skip(1)
        .filter_map(|row| {
            let link = row.split("/lines/").nth(1)?;
            let id = link.split('>').nth(1)?.split('<').next()?;
            Some(id.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_and_filter_of_reasonq_view() {
    let env = filled(40).await;
    let view = Running::start(&env, &["view", "--listen", "127.0.0.1:0"], &[]);

    let home = view.page("/").await;
    assert!(home.contains(&format!("data-batch=\"{BATCH}\"")), "{home}");
    assert!(home.contains("finished with failures"), "{home}");
    assert!(home.contains("data-field=\"completed\">38<"), "{home}");
    assert!(home.contains("data-field=\"failed\">2<"), "{home}");
    assert!(home.contains("read-only"));

    // The first page, in line order, with the hostile prompt's answer as text.
    let lines = view.page(&format!("/view/batches/{BATCH}")).await;
    let ids = row_ids(&lines);
    assert_eq!(ids.len(), 40, "{lines}");
    assert_eq!(ids[0], "q000");
    assert!(lines.contains("&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;"));
    assert!(
        !lines.contains("<script>document.title"),
        "the prompt's markup is escaped"
    );
    assert!(!lines.contains("<img src=x"));

    // Keyset pages: from a line, a limit, and the link on.
    let page = view
        .page(&format!("/view/batches/{BATCH}?from=10&limit=5"))
        .await;
    assert_eq!(row_ids(&page), ["q010", "q011", "q012", "q013", "q014"]);
    assert!(page.contains("from=15&amp;limit=5"), "{page}");
    assert!(page.contains("Lines 11–15 of 40 examined"), "{page}");

    // Filters: state, error code, text (in the prompt and in the answer).
    let failed = view
        .page(&format!("/view/batches/{BATCH}?state=discarded"))
        .await;
    assert_eq!(row_ids(&failed), ["q005", "q006"]);
    assert!(failed.contains(">bad_request<"), "{failed}");
    let by_code = view
        .page(&format!("/view/batches/{BATCH}?code=bad_request"))
        .await;
    assert_eq!(row_ids(&by_code), ["q005", "q006"]);
    let none = view
        .page(&format!("/view/batches/{BATCH}?code=timeout"))
        .await;
    assert!(row_ids(&none).is_empty());
    assert!(none.contains("No matching lines"));
    let found = view
        .page(&format!("/view/batches/{BATCH}?q=ZEBRA-needle"))
        .await;
    assert_eq!(row_ids(&found), ["q007"]);
    let in_answers = view
        .page(&format!("/view/batches/{BATCH}?q=answer+to%3A+where"))
        .await;
    assert_eq!(row_ids(&in_answers), ["q007"]);

    // Sorting: every answered line ranked, most expensive first (the hostile prompt is the
    // longest, so it costs the most).
    let by_cost = view.page(&format!("/view/batches/{BATCH}?sort=cost")).await;
    let ranked = row_ids(&by_cost);
    assert_eq!(ranked.len(), 38, "{by_cost}");
    assert_eq!(ranked[0], "q003");
    assert!(by_cost.contains("Ranked lines 1–40 of 40"), "{by_cost}");
    let by_latency = view
        .page(&format!("/view/batches/{BATCH}?sort=latency&limit=10"))
        .await;
    assert_eq!(row_ids(&by_latency).len(), 10);
    assert!(
        by_latency.contains("skip=10"),
        "more of the ranking: {by_latency}"
    );

    // A line in full: the hostile one escaped, a failed one with its error.
    let hostile = view.page(&format!("/view/batches/{BATCH}/lines/3")).await;
    assert!(hostile.contains("<h2>Request</h2>"));
    assert!(hostile.contains("&lt;img src=x onerror="), "{hostile}");
    assert!(!hostile.contains("<img src=x"));
    assert!(hostile.contains("Raw response (JSON)"));
    assert!(hostile.contains("the upstream API (a live call)"));
    assert!(hostile.contains("Judged outcome"));
    let failure = view.page(&format!("/view/batches/{BATCH}/lines/5")).await;
    assert!(failure.contains("<code>bad_request</code>"), "{failure}");
    assert!(failure.contains("the prompt is not allowed"));
    assert!(
        failure.contains("<th>HTTP status</th><td>400</td>"),
        "{failure}"
    );

    // The files, made from the database as they are sent.
    let (status, headers, output) = view
        .get(&format!("/view/batches/{BATCH}/output.jsonl"))
        .await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/x-ndjson"));
    assert_eq!(output.lines().count(), 40);
    let (_, _, errors) = view
        .get(&format!("/view/batches/{BATCH}/errors.jsonl"))
        .await;
    let errors: Vec<Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["custom_id"], "q005");

    // Memory: the search finds the line's experience; patterns as bars.
    let memory = view.page("/view/memory?q=zebra-needle").await;
    assert!(memory.contains("where is the zebra-needle?"), "{memory}");
    assert!(memory.contains("<meter"), "{memory}");
    assert!(memory.contains("<progress"));
    let hostile_search = view.page("/view/memory?q=pwned").await;
    assert!(!hostile_search.contains("<script>document"));

    // The live refresh's JSON, the script, and refusals.
    let (status, _, live) = view.get("/view/api/batches").await;
    assert_eq!(status, 200);
    let live: Value = serde_json::from_str(&live).unwrap();
    assert_eq!(live[0]["batch"], BATCH);
    assert_eq!(live[0]["fields"]["completed"], "38");
    assert_eq!(live[0]["running"], false);
    let (status, headers, script) = view.get("/static/view.js").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(script.contains("textContent"));
    let (status, _, body) = view.get("/view/batches/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("no batch named"));
    let (status, _, _) = view.get(&format!("/view/batches/{BATCH}/lines/999")).await;
    assert_eq!(status, 404);
    let (status, _, _) = view
        .send(
            view.http
                .post(view.url(&format!("/view/batches/{BATCH}/retry"))),
        )
        .await;
    assert_eq!(status, 405, "reasonq view has no actions");
    assert!(
        !lines.contains("data-action"),
        "no action buttons in a read-only view"
    );
}

/// A line that failed once then succeeded shows the failed try (its code, status and wait)
/// and the answer; the same line answered again from the cache shows the tier; `jobs show
/// --json` says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_shows_every_failed_attempt_and_the_cache_tier_of_its_answer() {
    let env = Env::start(SimConfig::default()).await;
    let calls = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let seen = calls.clone();
    env.server
        .set_responder(std::sync::Arc::new(move |body: &Value| {
            let prompt = body["messages"][0]["content"].as_str().unwrap_or_default();
            let n = {
                let mut calls = seen.lock().unwrap();
                *calls += 1;
                *calls
            };
            if n == 1 {
                return Reply::Fault(Fault::status(503));
            }
            Reply::Text(format!("answer to: {prompt}"))
        }));
    let line = serde_json::json!({"id": "flaky", "question": "what is <b>six</b>?",
                                 "params": {"temperature": 0}});
    env.write_input("in.jsonl", &[line.to_string()]);
    // One call per attempt and no backoff: the 503 goes back to the queue at once.
    let vars = [
        ("REASONQ_RETRY_MAX_ATTEMPTS", "1"),
        ("REASONQ_QUEUE_BACKOFF_BASE_S", "0"),
    ];
    for batch in ["first", "again"] {
        let output = format!("{batch}.jsonl");
        let args = ["batch", "in.jsonl", "--batch", batch, "-o", &output];
        let out = env.run_with_env(&args, &vars).await;
        assert!(out.status.success(), "{}", support::stderr(&out));
    }
    assert_eq!(
        *calls.lock().unwrap(),
        2,
        "the second batch is answered by the cache"
    );

    let view = Running::start(&env, &["view", "--listen", "127.0.0.1:0"], &[]);
    let first = view.page("/view/batches/first/lines/0").await;
    assert!(first.contains("<table class=\"attempts\">"), "{first}");
    assert!(
        first.contains("<td><code>server_error</code></td><td>503</td>"),
        "{first}"
    );
    assert!(first.contains("simulated HTTP 503"), "{first}");
    assert!(
        first.contains("answer to: what is &lt;b&gt;six&lt;/b&gt;?"),
        "{first}"
    );
    assert!(
        first.contains("<th>cache</th><td>fresh call</td>"),
        "{first}"
    );
    let again = view.page("/view/batches/again/lines/0").await;
    assert!(again.contains("<th>cache</th><td>disk</td>"), "{again}");
    assert!(!again.contains("<table class=\"attempts\">"), "{again}");
    drop(view);

    let list = env
        .run(&["jobs", "list", "--batch", "first", "--json"])
        .await;
    let jobs: Value = serde_json::from_str(&support::stdout(&list)).unwrap();
    let id = jobs[0]["id"].as_u64().unwrap().to_string();
    let show = env.run(&["jobs", "show", &id, "--json"]).await;
    let shown: Value = serde_json::from_str(&support::stdout(&show)).unwrap();
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{shown}");
    assert_eq!(attempts[0]["code"], "server_error");
    assert_eq!(attempts[0]["status_code"], 503);
    assert!(attempts[0]["wait_ms"].is_u64(), "{shown}");
    assert!(shown["response"]["cache_tier"].is_null(), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_says_why_it_cannot_open_a_held_database_or_listen_off_loopback() {
    let env = filled(4).await;
    let first = Running::start(&env, &["view", "--listen", "127.0.0.1:0"], &[]);
    let second = env.run(&["view", "--listen", "127.0.0.1:0"]).await;
    assert_eq!(second.status.code(), Some(1));
    let err = support::stderr(&second);
    assert!(err.contains("is held by a running"), "{err}");
    assert!(err.contains("reasonq status"), "{err}");
    // Meanwhile the viewer answers the other commands' queries.
    let status = env.run(&["status", "--json"]).await;
    assert!(status.status.success(), "{}", support::stderr(&status));
    drop(first);
    let open = env.run(&["view", "--listen", "0.0.0.0:0"]).await;
    assert_eq!(open.status.code(), Some(1));
    assert!(support::stderr(&open).contains("loopback only"));
    // A wrong path is an error, not a new empty database.
    let missing = env.path("missing.redb");
    let mut cmd = env.command_on(&missing, &["view", "--listen", "127.0.0.1:0"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        support::stderr(&out).contains("no database at"),
        "{}",
        support::stderr(&out)
    );
    assert!(!missing.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shows_the_pages_behind_its_key_and_confirms_actions() {
    let env = filled(10).await;
    let key = "s3cret-key";
    let serve = Running::start(
        &env,
        &["serve", "--listen", "127.0.0.1:0"],
        &[("REASONQ_SERVE_KEY", key)],
    );
    // Without the key: the login page; the script and style sheet are public.
    let (status, _, body) = serve.get("/").await;
    assert_eq!(status, 401);
    assert!(body.contains("name=\"key\""), "{body}");
    assert_eq!(serve.get("/static/view.css").await.0, 200);
    let (status, _, _) = serve
        .send(serve.http.post(serve.url("/view/login")).body("key=wrong"))
        .await;
    assert_eq!(status, 401);
    let (status, headers, _) = serve
        .send(
            serve
                .http
                .post(serve.url("/view/login"))
                .body(format!("key={key}")),
        )
        .await;
    assert_eq!(status, 303);
    let cookie = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(key), "the cookie is no copy of the key");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |path: &str| serve.http.get(serve.url(path)).header("cookie", &cookie);
    let (status, _, home) = serve.send(with_cookie("/")).await;
    assert_eq!(status, 200, "{home}");
    assert!(home.contains(BATCH));
    let (status, _, lines) = serve
        .send(with_cookie(&format!("/view/batches/{BATCH}")))
        .await;
    assert_eq!(status, 200);
    assert!(
        lines.contains("data-action=\"/view/batches/viewed/retry\""),
        "{lines}"
    );
    assert!(lines.contains("data-key=\"required\""));
    // The API still wants the bearer key, not the cookie.
    let (status, _, _) = serve.send(with_cookie("/v1/batches")).await;
    assert_eq!(status, 401);

    // Actions: the page's header and the key, both required.
    // An action with or without the page's header, the cookie and the key.
    let act = |action: &str, header: bool, cookie: Option<&str>, key: Option<&str>| {
        let mut req = serve
            .http
            .post(serve.url(&format!("/view/batches/{BATCH}/{action}")));
        if header {
            req = req.header("x-reasonq-action", "1");
        }
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        serve.send(req)
    };
    let (status, _, _) = act("retry", false, Some(&cookie), Some(key)).await;
    assert_eq!(status, 403, "no action without the page's header");
    let (status, _, _) = act("retry", true, Some(&cookie), None).await;
    assert_eq!(status, 401, "the cookie alone does not act");
    let (status, _, body) = act("retry", true, None, Some(key)).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("2 failed lines"),
        "{answer}"
    );
    let (status, _, body) = act("cancel", true, None, Some(key)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("waiting lines"), "{body}");
}

/// Headless Chromium, or why there is none: the test is skipped only off CI.
fn chromium() -> Option<std::path::PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::process::Command::new(name)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| std::path::PathBuf::from(name))
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing under CI: .ci/run installs Debian's chromium package"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium); CI runs it");
    }
    found
}

/// The DOM a headless Chromium renders for `url` once its scripts ran.
fn dump_dom(chromium: &std::path::Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_renders_every_page_and_runs_no_script_from_a_prompt() {
    let Some(chromium) = chromium() else {
        return;
    };
    // Filled by a `--simulate` batch, as a user would try it.
    let env = Env::start(SimConfig::default()).await;
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let question = if i == 3 {
                HOSTILE.to_string()
            } else {
                format!("question number {i}")
            };
            serde_json::json!({"id": format!("q{i:03}"), "question": question}).to_string()
        })
        .collect();
    env.write_input("in.jsonl", &lines);
    let out = env
        .run(&[
            "--simulate",
            "batch",
            "in.jsonl",
            "--batch",
            BATCH,
            "-o",
            "out.jsonl",
            "-c",
            "16",
        ])
        .await;
    assert!(out.status.success(), "{}", support::stderr(&out));
    let view = Running::start(&env, &["view", "--listen", "127.0.0.1:0"], &[]);
    let pages = [
        ("/", format!("data-batch=\"{BATCH}\"")),
        (
            &*format!("/view/batches/{BATCH}"),
            "/lines/11\">q011</a>".to_string(),
        ),
        (
            &*format!("/view/batches/{BATCH}?q=pwned"),
            "/lines/3\">q003</a>".to_string(),
        ),
        (
            &*format!("/view/batches/{BATCH}/lines/3"),
            "Raw response (JSON)".to_string(),
        ),
        ("/view/memory?q=question", "question number".to_string()),
    ];
    for (path, expected) in &pages {
        let dom = dump_dom(&chromium, &view.url(path));
        assert!(dom.contains(expected), "{path}: no {expected:?} in {dom}");
        assert!(
            dom.contains("data-viewer=\"ready\""),
            "{path}: the page's own script ran"
        );
        assert!(
            !dom.contains("data-pwned=\"1\""),
            "{path}: a prompt's handler ran: {dom}"
        );
        assert!(
            !dom.contains("<title>pwned"),
            "{path}: a prompt's script ran"
        );
        assert!(
            !dom.contains("<img src=\"x\""),
            "{path}: a prompt's markup became an element"
        );
    }
}
