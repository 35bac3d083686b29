//! Peak memory of the 100k burn-down, in its own process so nothing else inflates it:
//! enqueue 100k jobs in batches, drain them with 8 workers leasing 64 at a time, print the
//! rates and VmHWM (peak RSS) from /proc/self/status.
//!
//! `cargo bench --bench queue_rss`; env `JOBS` sets the job count, `DURABILITY=none` turns
//! off fsync, `REOPEN=1` reopens the file between enqueue and burn-down.

#[path = "queue_support/mod.rs"]
mod queue_support;

use queue_support::reasonq_load;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of this process so far (user + system), in seconds: a throughput figure that
/// holds up when other processes share the cores.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let jobs: u64 = std::env::var("JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut queue = reasonq_load::open(dir.path(), "rss.redb");
        let cpu = cpu_secs();
        let t = reasonq_load::enqueue_batched(&queue, jobs, 1000).await;
        println!(
            "enqueue {jobs} in batches of 1000: {:.0} jobs/s, {:.0} jobs per CPU-second",
            jobs as f64 / t.as_secs_f64(),
            jobs as f64 / (cpu_secs() - cpu)
        );
        if std::env::var("REOPEN").is_ok() {
            let path = queue.store().path().to_path_buf();
            queue.store().close_async().await.unwrap();
            drop(queue);
            let store = reasonq::store::Store::open_async(reasonq::store::StoreConfig::new(path))
                .await
                .unwrap();
            queue = reasonq::queue::Queue::new(store, reasonq::queue::QueueConfig::default());
        }
        let cpu = cpu_secs();
        let (t, done) = reasonq_load::drain(&queue, 8, 64).await;
        assert_eq!(done, jobs);
        println!(
            "burn-down {jobs} with 8 workers x 64: {:.0} jobs/s, {:.0} jobs per CPU-second",
            jobs as f64 / t.as_secs_f64(),
            jobs as f64 / (cpu_secs() - cpu)
        );
        queue.store().close_async().await.unwrap();
    });
    match vm_hwm_kib() {
        Some(kib) => println!("peak RSS (VmHWM): {:.1} MiB", kib as f64 / 1024.0),
        None => println!("peak RSS: /proc/self/status not readable"),
    }
}
