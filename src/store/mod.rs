//! The embedded store: one redb file holding experiences, patterns, the job queue and the
//! response cache. This layer knows the file, its tables and its writer; what the records
//! mean belongs to the modules above, which hand in what must run at open (see
//! [`StoreConfig::with_open_hook`]).
//!
//! redb is synchronous, so nothing here runs on the async runtime. Writes go to one dedicated
//! writer thread that **groups** the requests waiting in its channel into one transaction
//! (group commit): under load, one fsync carries many callers' writes, which is how the queue
//! goes past the disk's fsync rate. Each caller is answered only once its commit is durable.
//! Reads run on `spawn_blocking` with their own read transaction (MVCC: they never wait for
//! the writer).

pub mod bodies;
pub mod check;
pub mod join;
pub mod sizes;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Current schema version. Bump it and add a step to [`MIGRATIONS`] when the layout changes.
pub const SCHEMA_VERSION: u64 = 2;

/// One schema upgrade step, run inside the open transaction.
type Migration = fn(&WriteTransaction) -> Result<()>;

/// `MIGRATIONS[i]` upgrades a database from schema version `i + 1` to `i + 2`.
const MIGRATIONS: &[Migration] = &[cache_journal];

/// Version 2: new prompt cache rows go to `cache_journal` first (the open path creates it).
/// Nothing moves; the bump keeps an older build, which would not look there, from opening
/// the file.
fn cache_journal(_txn: &WriteTransaction) -> Result<()> {
    Ok(())
}

const _: () = assert!(MIGRATIONS.len() as u64 + 1 == SCHEMA_VERSION);

/// How durable a commit is before the caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync before answering: a crash never loses an acknowledged write (default).
    #[default]
    Immediate,
    /// No fsync per commit: much faster, but a crash (`kill -9` too: redb holds such commits
    /// in memory) loses the writes since the last durable commit. The writer makes one at
    /// least every [`SYNC_EVERY`] while there are such writes, and one at close, so the
    /// window is bounded.
    None,
}

/// A step run in the open transaction of every [`Store::open`], after the schema check.
pub type OpenHook = fn(&WriteTransaction) -> Result<()>;

/// redb's page cache by default: redb's own default is 1 GiB; 16 MiB keeps RSS small.
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// See [`StoreConfig::lock_wait`].
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(2);

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database file; created (mode 0600) if missing.
    pub path: PathBuf,
    /// redb's page cache. redb defaults to 1 GiB; we default to 16 MiB to keep RSS small.
    pub cache_size_bytes: usize,
    /// Commit durability.
    pub durability: Durability,
    /// Most write requests one group commit may carry.
    pub max_group: usize,
    /// Run at open, in order, in the transaction that checks the schema (the queue's rescue
    /// of jobs a dead process left running is one).
    pub on_open: Vec<OpenHook>,
    /// How long an open waits for another process to let go of the file before it fails
    /// with [`Error::Locked`]: a read-only command holds a free database for milliseconds,
    /// and a batch started in that instant should wait for it, not fail.
    pub lock_wait: Duration,
}

impl StoreConfig {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            cache_size_bytes: DEFAULT_CACHE_BYTES,
            durability: Durability::Immediate,
            max_group: 1024,
            on_open: Vec::new(),
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }

    /// Adds a step to run at every open.
    pub fn with_open_hook(mut self, hook: OpenHook) -> Self {
        self.on_open.push(hook);
        self
    }
}

/// A handle to the open database. Cheap to clone; the file closes when [`Store::close`] is
/// called (or the last handle drops).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while `Inner` drops (see its `Drop`).
    db: Option<Arc<redb::Database>>,
    path: PathBuf,
    writer: Mutex<Option<Writer>>,
    /// Nanoseconds the writer thread has spent in transactions (fsync included).
    busy_ns: Arc<AtomicU64>,
    /// See [`Store::shared`].
    shared: Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

struct Writer {
    tx: mpsc::Sender<Box<dyn WriteOp>>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the database, checks and migrates its schema, and starts the writer
    /// thread. Blocking: call it from `spawn_blocking` or before the runtime starts, or use
    /// [`Store::open_async`].
    pub fn open(config: StoreConfig) -> Result<Store> {
        let db = open_database(&config)?;
        // redb may also panic in the first transaction on a damaged file.
        let prepared = unpanicked(&config.path, || {
            let txn = db.begin_write()?;
            check_schema(&txn)?;
            for hook in &config.on_open {
                hook(&txn)?;
            }
            txn.commit()?;
            Ok(())
        });
        if let Err(e) = prepared {
            drop_guarded(db);
            return Err(e);
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Box<dyn WriteOp>>();
        let thread_db = db.clone();
        let durability = config.durability;
        let max_group = config.max_group.max(1);
        let busy_ns = Arc::new(AtomicU64::new(0));
        let thread_busy = busy_ns.clone();
        let thread = std::thread::Builder::new()
            .name("reasonq-writer".into())
            .spawn(move || writer_loop(&thread_db, &rx, durability, max_group, &thread_busy))
            .map_err(|e| Error::BadDatabase {
                path: config.path.display().to_string(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                db: Some(db),
                path: config.path,
                writer: Mutex::new(Some(Writer { tx, thread })),
                busy_ns,
                shared: Mutex::default(),
            }),
        })
    }

    /// [`Store::open`] off the async runtime.
    pub async fn open_async(config: StoreConfig) -> Result<Store> {
        tokio::task::spawn_blocking(move || Store::open(config))
            .await
            .map_err(|e| Error::Task(format!("store open task failed: {e}")))?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How long the writer thread has spent in transactions since the store opened, fsync
    /// included: sampled twice, it says how busy the writer was in between (the background
    /// indexer steps aside while foreground writes keep it busy).
    pub fn writer_busy(&self) -> Duration {
        Duration::from_nanos(self.inner.busy_ns.load(Ordering::Relaxed))
    }

    /// State the layers above keep beside the open file (the prompt cache's journal index):
    /// one value of each type per open file however many handles share it, made by `init`
    /// on first use. It must not hold a `Store`, or the file would never close.
    pub fn shared<T: Send + Sync + 'static>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let mut slots = self.inner.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = slots
            .iter()
            .find_map(|s| Arc::clone(s).downcast::<T>().ok())
        {
            return found;
        }
        let made = Arc::new(init());
        slots.push(made.clone());
        made
    }

    /// Runs `f` in a write transaction on the writer thread, grouped with other waiting writes
    /// into one commit, and returns its result once the commit is durable.
    ///
    /// `f` must be a pure function of the transaction's state: if another write in the same
    /// group fails, the group is rolled back and each write is re-run alone, so `f` may run
    /// more than once (only one run is ever committed). An `Err` from `f` rolls back `f`'s
    /// own changes and is returned to the caller.
    pub async fn write<R, F>(&self, f: F) -> Result<R>
    where
        F: Fn(&WriteTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let rx = self.submit(f, false)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// [`Store::write`] for a write whose loss in a crash is harmless, such as a job lease
    /// (every lease is rescued at the next open anyway) or a heartbeat: it is committed
    /// without its own fsync and becomes durable with the next durable commit. Grouped with
    /// a durable write, it is as durable as that one. It is answered once committed.
    pub async fn write_relaxed<R, F>(&self, f: F) -> Result<R>
    where
        F: Fn(&WriteTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let rx = self.submit(f, true)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// [`Store::write`] for synchronous callers (not on the async runtime).
    pub fn write_blocking<R, F>(&self, f: F) -> Result<R>
    where
        F: Fn(&WriteTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let rx = self.submit(f, false)?;
        rx.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// Applies `item` with the other items of kind `J` waiting for the writer, in one call
    /// ([`join`]), grouped and made durable as [`Store::write`] does; returns its own outcome.
    pub async fn write_joined<J: join::Join>(&self, item: J::Item) -> Result<J::Out> {
        let (reply, rx) = oneshot::channel();
        self.send(Box::new(join::Joined::<J>::new(item, reply)))?;
        rx.await.map_err(|_| Error::Closed)?
    }

    fn send(&self, op: Box<dyn WriteOp>) -> Result<()> {
        let guard = self.inner.writer.lock().map_err(|_| Error::Closed)?;
        let writer = guard.as_ref().ok_or(Error::Closed)?;
        writer.tx.send(op).map_err(|_| Error::Closed)
    }

    fn submit<R, F>(&self, f: F, relaxed: bool) -> Result<oneshot::Receiver<Result<R>>>
    where
        F: Fn(&WriteTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let op = Box::new(TypedOp {
            f,
            out: None,
            reply: Some(reply),
            relaxed,
        });
        self.send(op)?;
        Ok(rx)
    }

    /// Runs `f` in a read transaction on the blocking pool.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&ReadTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let db = self.inner.db.clone().ok_or(Error::Closed)?;
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || {
            unpanicked(&path, || {
                let txn = db.begin_read()?;
                f(&txn)
            })
        })
        .await
        .map_err(|e| Error::Task(format!("read task failed: {e}")))?
    }

    /// [`Store::read`] for synchronous callers.
    pub fn read_blocking<R>(&self, f: impl FnOnce(&ReadTransaction) -> Result<R>) -> Result<R> {
        unpanicked(&self.inner.path, || {
            let db = self.inner.db.as_ref().ok_or(Error::Closed)?;
            let txn = db.begin_read()?;
            f(&txn)
        })
    }

    /// Stops the writer after the writes already submitted, makes a final durable commit and
    /// releases the file once every handle is gone. Later writes fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        let writer = self.inner.writer.lock().map_err(|_| Error::Closed)?.take();
        if let Some(Writer { tx, thread }) = writer {
            drop(tx);
            thread
                .join()
                .map_err(|_| Error::Task("the writer thread panicked".into()))?;
        }
        Ok(())
    }

    /// [`Store::close`] off the async runtime.
    pub async fn close_async(&self) -> Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| Error::Task(format!("close task failed: {e}")))?
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.writer.lock() {
            if let Some(Writer { tx, thread }) = guard.take() {
                drop(tx);
                let _ = thread.join();
            }
        }
        drop_guarded(self.db.take());
    }
}

fn open_database(config: &StoreConfig) -> Result<redb::Database> {
    let path_text = config.path.display().to_string();
    let mut builder = redb::Builder::new();
    builder.set_cache_size(config.cache_size_bytes);
    if !config.path.exists() {
        create_whole(&config.path, &builder).map_err(|e| Error::BadDatabase {
            path: path_text.clone(),
            message: format!("cannot create the database: {e}"),
        })?;
    }
    let deadline = Instant::now() + config.lock_wait;
    let opened = loop {
        // redb may panic on some damaged files; a bad file must be an error, never a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            builder.create(&config.path)
        }));
        let locked = matches!(opened, Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)));
        if !locked || Instant::now() >= deadline {
            break opened;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(Error::Locked { path: path_text }),
        Ok(Err(e)) => Err(Error::BadDatabase {
            path: path_text,
            message: format!("not a valid reasonq database ({e})"),
        }),
        Err(_) => Err(damaged(&config.path)),
    }
}

/// Runs `f`, turning a panic into [`damaged`]: redb panics on some damaged pages (found by
/// the `open_db` fuzz target), and a bad file must be an error, never a crash.
fn unpanicked<R>(path: &Path, f: impl FnOnce() -> Result<R>) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| Err(damaged(path)))
}

/// Drops `value` (a redb `Database`, which writes when it drops and may panic on a damaged
/// file, or panic again after an earlier panic poisoned its state): dropping a store must
/// never take the process down.
fn drop_guarded<T>(value: T) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(value)));
}

/// The error for a file redb panicked on.
fn damaged(path: &Path) -> Error {
    Error::BadDatabase {
        path: path.display().to_string(),
        message: "the file is damaged".into(),
    }
}

/// Creates a new database file whole or not at all: it is initialized under a temporary
/// name and linked into place only then, so a kill during the first open never leaves a
/// half-written file that no later open can read. Linking (not renaming) never replaces a
/// file another process created meanwhile.
fn create_whole(path: &Path, builder: &redb::Builder) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.creating", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    create_private_file(&temp)?;
    let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.create(&temp)));
    let result = match created {
        Ok(Ok(db)) => {
            drop_guarded(db);
            std::fs::File::open(&temp)
                .and_then(|f| f.sync_all())
                .and_then(|()| match std::fs::hard_link(&temp, path) {
                    // Another process created it first: open theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    other => other,
                })
                .and_then(|()| sync_dir(path))
        }
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(_) => Err(std::io::Error::other("redb panicked creating the file")),
    };
    let _ = std::fs::remove_file(&temp);
    result
}

/// Makes a new directory entry of `path` durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => std::fs::File::open(".")?.sync_all(),
    }
}

/// Creates the file with mode 0600 if it does not exist: it holds prompts and answers.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the tables of a new file, refuses a newer schema and migrates an older one.
fn check_schema(txn: &WriteTransaction) -> Result<()> {
    tables::create_all(txn)?;
    let mut meta = txn.open_table(tables::META)?;
    let found = meta.get(tables::SCHEMA_VERSION)?.map(|v| v.value());
    match found {
        None => {
            meta.insert(tables::SCHEMA_VERSION, SCHEMA_VERSION)?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(Error::SchemaTooNew {
                found: v,
                supported: SCHEMA_VERSION,
            })
        }
        Some(v) => {
            drop(meta);
            migrate(txn, v, MIGRATIONS)?;
        }
    }
    Ok(())
}

/// Runs `steps[from - 1..]` in order (version 0 counts as 1) and records version
/// `steps.len() + 1`. `steps` is a parameter so tests can run a chain longer than the real one.
fn migrate(txn: &WriteTransaction, from: u64, steps: &[Migration]) -> Result<()> {
    let from = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
    for step in steps.iter().skip(from) {
        step(txn)?;
    }
    txn.open_table(tables::META)?
        .insert(tables::SCHEMA_VERSION, steps.len() as u64 + 1)?;
    Ok(())
}

/// A write request with its result slot; type-erased so one channel carries them all.
trait WriteOp: Send {
    fn apply(&mut self, txn: &WriteTransaction) -> Result<()>;
    /// Whether this write may be committed without its own fsync.
    fn relaxed(&self) -> bool;
    fn reply(self: Box<Self>, outcome: Result<()>);
    /// The kind of a joined write ([`join`]); `None` for a plain one.
    fn kind(&self) -> Option<std::any::TypeId> {
        None
    }
    /// Takes in `other`, a write of the same kind (given back otherwise).
    fn absorb(&mut self, other: Box<dyn WriteOp>) -> std::result::Result<(), Box<dyn WriteOp>> {
        Err(other)
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
    /// The callers' writes this one carries, to be run alone when it failed as a whole.
    fn split(self: Box<Self>) -> Vec<Box<dyn WriteOp>>;
    /// How many callers' writes it carries.
    fn parts(&self) -> usize {
        1
    }
}

struct TypedOp<F, R> {
    f: F,
    out: Option<R>,
    reply: Option<oneshot::Sender<Result<R>>>,
    relaxed: bool,
}

impl<F, R> WriteOp for TypedOp<F, R>
where
    F: Fn(&WriteTransaction) -> Result<R> + Send + 'static,
    R: Send + 'static,
{
    fn apply(&mut self, txn: &WriteTransaction) -> Result<()> {
        // A panicking write must fail alone, not kill the writer thread (and the store) for
        // every other caller; its transaction is then rolled back like any failed write.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.f)(txn)));
        self.out = Some(run.map_err(|_| Error::Task("a store write panicked".into()))??);
        Ok(())
    }

    fn relaxed(&self) -> bool {
        self.relaxed
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn WriteOp>> {
        vec![self]
    }

    fn reply(mut self: Box<Self>, outcome: Result<()>) {
        let result = outcome.and_then(|()| {
            self.out
                .take()
                .ok_or_else(|| Error::Task("write produced no result".into()))
        });
        if let Some(reply) = self.reply.take() {
            // The caller may have gone away (cancelled); the write is committed regardless.
            let _ = reply.send(result);
        }
    }
}

/// How busy the writer was since the last [`BusyMeter::reset`]: background work (the
/// retrieval indexer, the prompt cache's journal merges) steps aside while foreground writes
/// (a drain, an enqueue) keep the writer busy, since the writer sets a drain's pace.
pub struct BusyMeter {
    /// When it was last reset, and the writer's busy time then.
    since: Mutex<(Instant, Duration)>,
}

impl BusyMeter {
    /// A meter that measures the writer from now.
    pub fn new(store: &Store) -> BusyMeter {
        BusyMeter {
            since: Mutex::new((Instant::now(), store.writer_busy())),
        }
    }

    /// The share of the time since the last reset the writer spent in transactions (0 to 1).
    pub fn share(&self, store: &Store) -> f64 {
        let (at, busy) = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        let wall = at.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        store.writer_busy().saturating_sub(busy).as_secs_f64() / wall
    }

    /// Measures from now (after the background work's own transaction, which is not the
    /// foreground's business).
    pub fn reset(&self, store: &Store) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) =
            (Instant::now(), store.writer_busy());
    }
}

/// Longest a non-durable commit (a relaxed write, or any write with durability `none`) waits
/// for a durable one: a crash of the machine or a `kill -9` loses at most this window.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);

fn writer_loop(
    db: &redb::Database,
    rx: &mpsc::Receiver<Box<dyn WriteOp>>,
    durability: Durability,
    max_group: usize,
    busy_ns: &AtomicU64,
) {
    // Since when commits wait for a durable one.
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let received = rx.recv_timeout(SYNC_EVERY);
        let started = Instant::now();
        match received {
            Ok(first) => {
                let mut group = vec![first];
                while group.len() < max_group {
                    match rx.try_recv() {
                        Ok(op) => group.push(op),
                        Err(_) => break,
                    }
                }
                if commit_group(db, join::join(group), durability) {
                    unsynced_since.get_or_insert_with(Instant::now);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if unsynced_since.is_some_and(|t| t.elapsed() >= SYNC_EVERY) && sync(db) {
            unsynced_since = None;
        }
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        busy_ns.fetch_add(spent, Ordering::Relaxed);
    }
    // Relaxed or non-durable commits still end on disk: one empty immediate commit persists
    // the rest.
    if unsynced_since.is_some() || durability == Durability::None {
        sync(db);
    }
}

/// An empty durable commit, which makes every earlier commit durable too.
fn sync(db: &redb::Database) -> bool {
    db.begin_write().is_ok_and(|txn| txn.commit().is_ok())
}

fn begin(db: &redb::Database, durability: Durability) -> Result<WriteTransaction> {
    let mut txn = db.begin_write()?;
    if durability == Durability::None {
        txn.set_durability(redb::Durability::None)?;
    }
    Ok(txn)
}

/// Commits a group in one transaction. If any write in it fails, the group is rolled back
/// and every write runs alone, so one caller's error never undoes or fails another's write.
fn commit_group(
    db: &redb::Database,
    mut group: Vec<Box<dyn WriteOp>>,
    durability: Durability,
) -> bool {
    // Without fsync only when the store is non-durable or every write in it allows it.
    let effective = |ops: &[Box<dyn WriteOp>]| {
        if durability == Durability::None || ops.iter().all(|op| op.relaxed()) {
            Durability::None
        } else {
            Durability::Immediate
        }
    };
    if group.len() > 1 {
        let level = effective(&group);
        match begin(db, level) {
            Ok(txn) => {
                if group.iter_mut().all(|op| op.apply(&txn).is_ok()) {
                    let outcome = txn.commit().map_err(Error::from);
                    let unsynced = outcome.is_ok() && level == Durability::None;
                    for op in group {
                        op.reply(outcome.clone());
                    }
                    return unsynced;
                }
                drop(txn); // aborts
            }
            Err(e) => {
                for op in group {
                    op.reply(Err(e.clone()));
                }
                return false;
            }
        }
    }
    let mut unsynced = false;
    // In order: popped from the back.
    let mut alone: Vec<Box<dyn WriteOp>> = group.into_iter().rev().collect();
    while let Some(mut op) = alone.pop() {
        let level = effective(std::slice::from_ref(&op));
        let outcome = begin(db, level).and_then(|txn| {
            op.apply(&txn)?;
            txn.commit().map_err(Error::from)
        });
        if outcome.is_err() && op.parts() > 1 {
            // A joined write failed as a whole: each of its callers' writes runs alone, so
            // only the faulty one fails.
            alone.extend(op.split().into_iter().rev());
            continue;
        }
        unsynced |= outcome.is_ok() && level == Durability::None;
        op.reply(outcome);
    }
    unsynced
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    fn temp_db() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        tables::create_all(&txn).unwrap();
        txn.commit().unwrap();
        (dir, db)
    }

    /// A write setting meta key `key`, failing or panicking on demand.
    fn op(
        key: &'static str,
        behaviour: &'static str,
    ) -> (Box<dyn WriteOp>, oneshot::Receiver<Result<u64>>) {
        let (reply, rx) = oneshot::channel();
        let f = move |txn: &WriteTransaction| {
            txn.open_table(tables::META)?.insert(key, 1)?;
            match behaviour {
                "fail" => Err(Error::Invalid(format!("{key} fails"))),
                "panic" => panic!("{key} panics"),
                _ => Ok(7),
            }
        };
        let op = TypedOp {
            f,
            out: None,
            reply: Some(reply),
            relaxed: behaviour == "relaxed",
        };
        (Box::new(op), rx)
    }

    fn meta_keys(db: &redb::Database) -> Vec<String> {
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(tables::META).unwrap();
        let keys = meta
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value().to_owned());
        keys.collect()
    }

    #[test]
    fn a_failing_or_panicking_write_in_a_group_fails_alone() {
        let (_dir, db) = temp_db();
        let (ops, replies): (Vec<_>, Vec<_>) = [
            op("a", "ok"),
            op("b", "fail"),
            op("c", "ok"),
            op("d", "panic"),
            op("e", "ok"),
        ]
        .into_iter()
        .unzip();
        commit_group(&db, ops, Durability::Immediate);
        let results: Vec<_> = replies
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect();
        assert!(matches!(results[0], Ok(7)));
        assert!(matches!(&results[1], Err(Error::Invalid(m)) if m == "b fails"));
        assert!(matches!(results[2], Ok(7)));
        assert!(matches!(&results[3], Err(Error::Task(m)) if m.contains("panicked")));
        assert!(matches!(results[4], Ok(7)));
        assert_eq!(meta_keys(&db), ["a", "c", "e"]);
    }

    #[test]
    fn a_group_of_good_writes_commits_together() {
        let (_dir, db) = temp_db();
        let (ops, replies): (Vec<_>, Vec<_>) = [op("a", "ok"), op("b", "ok")].into_iter().unzip();
        commit_group(&db, ops, Durability::None);
        for mut rx in replies {
            assert!(matches!(rx.try_recv().unwrap(), Ok(7)));
        }
        assert_eq!(meta_keys(&db), ["a", "b"]);
    }

    fn version(db: &redb::Database) -> Option<u64> {
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(tables::META).unwrap();
        let v = meta.get(tables::SCHEMA_VERSION).unwrap().map(|v| v.value());
        v
    }

    #[test]
    fn migration_runs_the_missing_steps_in_order_and_records_the_new_version() {
        fn step(txn: &WriteTransaction, name: &'static str) -> Result<()> {
            let mut meta = txn.open_table(tables::META)?;
            let n = meta.len()?;
            meta.insert(name, n)?;
            Ok(())
        }
        let steps: [Migration; 3] = [
            |txn| step(txn, "1to2"),
            |txn| step(txn, "2to3"),
            |txn| step(txn, "3to4"),
        ];
        let (_dir, db) = temp_db();
        let txn = db.begin_write().unwrap();
        migrate(&txn, 2, &steps).unwrap();
        txn.commit().unwrap();
        assert_eq!(meta_keys(&db), ["2to3", "3to4", "schema_version"]);
        assert_eq!(version(&db), Some(4));
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(tables::META).unwrap();
        assert_eq!(meta.get("2to3").unwrap().unwrap().value(), 0, "ran first");
        assert_eq!(meta.get("3to4").unwrap().unwrap().value(), 1, "ran second");
    }

    #[test]
    fn a_failing_migration_step_leaves_the_old_version() {
        let steps: [Migration; 1] = [|_| Err(Error::Invalid("step failed".into()))];
        let (_dir, db) = temp_db();
        let txn = db.begin_write().unwrap();
        txn.open_table(tables::META)
            .unwrap()
            .insert(tables::SCHEMA_VERSION, 1)
            .unwrap();
        txn.commit().unwrap();
        let txn = db.begin_write().unwrap();
        assert!(migrate(&txn, 1, &steps).is_err());
        drop(txn);
        assert_eq!(version(&db), Some(1));
    }

    #[test]
    fn only_an_all_relaxed_group_skips_the_fsync() {
        let (_dir, db) = temp_db();
        let relaxed = || vec![op("a", "relaxed").0, op("b", "relaxed").0];
        assert!(commit_group(&db, relaxed(), Durability::Immediate));
        let mut mixed = relaxed();
        mixed.push(op("c", "ok").0);
        assert!(!commit_group(&db, mixed, Durability::Immediate));
        assert!(!commit_group(
            &db,
            vec![op("d", "ok").0],
            Durability::Immediate
        ));
        assert!(commit_group(
            &db,
            vec![op("e", "relaxed").0],
            Durability::Immediate
        ));
    }

    #[tokio::test]
    async fn relaxed_writes_are_on_disk_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let store = Store::open(StoreConfig::new(&path)).unwrap();
        store
            .write_relaxed(|txn| {
                txn.open_table(tables::META)?.insert("relaxed", 42)?;
                Ok(())
            })
            .await
            .unwrap();
        store.close_async().await.unwrap();
        drop(store);
        let store = Store::open(StoreConfig::new(&path)).unwrap();
        let v = store
            .read_blocking(|txn| {
                Ok(txn
                    .open_table(tables::META)?
                    .get("relaxed")?
                    .map(|v| v.value()))
            })
            .unwrap();
        assert_eq!(v, Some(42));
    }
}
