//! The embedded store: one redb file holding experiences, patterns, the job queue and the
//! response cache.
//!
//! redb is synchronous, so nothing here runs on the async runtime. Writes go to one dedicated
//! writer thread that **groups** the requests waiting in its channel into one transaction
//! (group commit): under load, one fsync carries many callers' writes, which is how the queue
//! goes past the disk's fsync rate. Each caller is answered only once its commit is durable.
//! Reads run on `spawn_blocking` with their own read transaction (MVCC: they never wait for
//! the writer).

pub mod codec;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Current schema version. Bump it and add a step to [`MIGRATIONS`] when the layout changes.
pub const SCHEMA_VERSION: u64 = 1;

/// `MIGRATIONS[i]` upgrades a database from schema version `i + 1` to `i + 2`.
/// Empty while version 1 is the only one; the open path already runs it.
const MIGRATIONS: &[fn(&WriteTransaction) -> Result<()>] = &[];

/// How durable a commit is before the caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync before answering: a crash never loses an acknowledged write (default).
    #[default]
    Immediate,
    /// No fsync: much faster, but a crash (of the machine, not just the process) can lose the
    /// writes since the last immediate commit. The store makes one immediate commit at close.
    None,
}

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
}

impl StoreConfig {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            cache_size_bytes: 16 * 1024 * 1024,
            durability: Durability::Immediate,
            max_group: 1024,
        }
    }
}

/// A handle to the open database. Cheap to clone; the file closes when [`Store::close`] is
/// called (or the last handle drops).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<redb::Database>,
    path: PathBuf,
    writer: Mutex<Option<Writer>>,
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
        let txn = db.begin_write()?;
        check_schema(&txn)?;
        for hook in OPEN_HOOKS {
            hook(&txn)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Box<dyn WriteOp>>();
        let thread_db = db.clone();
        let durability = config.durability;
        let max_group = config.max_group.max(1);
        let thread = std::thread::Builder::new()
            .name("reasonq-writer".into())
            .spawn(move || writer_loop(&thread_db, &rx, durability, max_group))
            .map_err(|e| Error::BadDatabase {
                path: config.path.display().to_string(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                path: config.path,
                writer: Mutex::new(Some(Writer { tx, thread })),
            }),
        })
    }

    /// [`Store::open`] off the async runtime.
    pub async fn open_async(config: StoreConfig) -> Result<Store> {
        tokio::task::spawn_blocking(move || Store::open(config))
            .await
            .map_err(|e| Error::Invalid(format!("store open task failed: {e}")))?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
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
        let rx = self.submit(f)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// [`Store::write`] for synchronous callers (not on the async runtime).
    pub fn write_blocking<R, F>(&self, f: F) -> Result<R>
    where
        F: Fn(&WriteTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let rx = self.submit(f)?;
        rx.blocking_recv().map_err(|_| Error::Closed)?
    }

    fn submit<R, F>(&self, f: F) -> Result<oneshot::Receiver<Result<R>>>
    where
        F: Fn(&WriteTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let op = Box::new(TypedOp {
            f,
            out: None,
            reply: Some(reply),
        });
        let guard = self.inner.writer.lock().map_err(|_| Error::Closed)?;
        let writer = guard.as_ref().ok_or(Error::Closed)?;
        writer.tx.send(op).map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    /// Runs `f` in a read transaction on the blocking pool.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&ReadTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            f(&txn)
        })
        .await
        .map_err(|e| Error::Invalid(format!("read task failed: {e}")))?
    }

    /// [`Store::read`] for synchronous callers.
    pub fn read_blocking<R>(&self, f: impl FnOnce(&ReadTransaction) -> Result<R>) -> Result<R> {
        let txn = self.inner.db.begin_read()?;
        f(&txn)
    }

    /// Stops the writer after the writes already submitted, makes a final durable commit and
    /// releases the file once every handle is gone. Later writes fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        let writer = self.inner.writer.lock().map_err(|_| Error::Closed)?.take();
        if let Some(Writer { tx, thread }) = writer {
            drop(tx);
            thread
                .join()
                .map_err(|_| Error::Invalid("the writer thread panicked".into()))?;
        }
        Ok(())
    }

    /// [`Store::close`] off the async runtime.
    pub async fn close_async(&self) -> Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| Error::Invalid(format!("close task failed: {e}")))?
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
    }
}

/// Steps run in the open transaction of every `Store::open`, after the schema check. The
/// queue rescues jobs left `running` by a dead process here: redb lets one process hold the
/// file, so any such job is orphaned.
const OPEN_HOOKS: &[fn(&WriteTransaction) -> Result<()>] = &[crate::queue::rescue_at_open];

fn open_database(config: &StoreConfig) -> Result<redb::Database> {
    let path_text = config.path.display().to_string();
    create_private_file(&config.path).map_err(|e| Error::BadDatabase {
        path: path_text.clone(),
        message: e.to_string(),
    })?;
    let mut builder = redb::Builder::new();
    builder.set_cache_size(config.cache_size_bytes);
    // redb may panic on some damaged files; a bad file must be an error, never a crash.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder.create(&config.path)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(Error::Locked { path: path_text }),
        Ok(Err(e)) => Err(Error::BadDatabase {
            path: path_text,
            message: format!("not a valid reasonq database ({e})"),
        }),
        Err(_) => Err(Error::BadDatabase {
            path: path_text,
            message: "the file is damaged".into(),
        }),
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
            migrate(txn, v)?;
        }
    }
    Ok(())
}

fn migrate(txn: &WriteTransaction, from: u64) -> Result<()> {
    let mut version = from.max(1);
    while version < SCHEMA_VERSION {
        let step = usize::try_from(version - 1)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
            .ok_or_else(|| Error::Invalid(format!("no migration from schema version {version}")))?;
        step(txn)?;
        version += 1;
    }
    txn.open_table(tables::META)?
        .insert(tables::SCHEMA_VERSION, SCHEMA_VERSION)?;
    Ok(())
}

/// A write request with its result slot; type-erased so one channel carries them all.
trait WriteOp: Send {
    fn apply(&mut self, txn: &WriteTransaction) -> Result<()>;
    fn reply(self: Box<Self>, outcome: Result<()>);
}

struct TypedOp<F, R> {
    f: F,
    out: Option<R>,
    reply: Option<oneshot::Sender<Result<R>>>,
}

impl<F, R> WriteOp for TypedOp<F, R>
where
    F: Fn(&WriteTransaction) -> Result<R> + Send,
    R: Send,
{
    fn apply(&mut self, txn: &WriteTransaction) -> Result<()> {
        self.out = Some((self.f)(txn)?);
        Ok(())
    }

    fn reply(mut self: Box<Self>, outcome: Result<()>) {
        let result = outcome.and_then(|()| {
            self.out
                .take()
                .ok_or_else(|| Error::Invalid("write produced no result".into()))
        });
        if let Some(reply) = self.reply.take() {
            // The caller may have gone away (cancelled); the write is committed regardless.
            let _ = reply.send(result);
        }
    }
}

fn writer_loop(
    db: &redb::Database,
    rx: &mpsc::Receiver<Box<dyn WriteOp>>,
    durability: Durability,
    max_group: usize,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        commit_group(db, group, durability);
    }
    // A non-durable store still ends on disk: one empty immediate commit persists the rest.
    if durability == Durability::None {
        if let Ok(txn) = db.begin_write() {
            let _ = txn.commit();
        }
    }
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
fn commit_group(db: &redb::Database, mut group: Vec<Box<dyn WriteOp>>, durability: Durability) {
    if group.len() > 1 {
        match begin(db, durability) {
            Ok(txn) => {
                if group.iter_mut().all(|op| op.apply(&txn).is_ok()) {
                    let outcome = txn.commit().map_err(Error::from);
                    for op in group {
                        op.reply(outcome.clone());
                    }
                    return;
                }
                drop(txn); // aborts
            }
            Err(e) => {
                for op in group {
                    op.reply(Err(e.clone()));
                }
                return;
            }
        }
    }
    for mut op in group {
        let outcome = begin(db, durability).and_then(|txn| {
            op.apply(&txn)?;
            txn.commit().map_err(Error::from)
        });
        op.reply(outcome);
    }
}
