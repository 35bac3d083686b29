//! Joined writes: writes of one kind that the writer thread applies as one call when they
//! wait in its channel together. A group commit already shares one fsync among its writes;
//! joining also shares the work that does not depend on the number of items (opening each
//! table once, one read-modify-write of a counter), which is what a burst of job completions
//! spends most of its writer time on.
//!
//! A kind is a type implementing [`Join`]; callers submit items with
//! [`Store::write_joined`](super::Store::write_joined) and each gets its own outcome.

use std::any::{Any, TypeId};
use std::marker::PhantomData;

use redb::WriteTransaction;
use tokio::sync::oneshot;

use super::WriteOp;
use crate::error::{Error, Result};

/// A kind of write whose waiting items are applied together.
pub trait Join: 'static {
    /// One caller's write.
    type Item: Send + 'static;
    /// What that caller gets back.
    type Out: Send + 'static;

    /// Applies `items` in `txn` and returns one outcome per item, in order. An item's `Err`
    /// must leave nothing of that item written (the others commit); an `Err` of the whole
    /// call rolls back the group, and the writer then applies each item alone, so one
    /// item's fault never fails another. Like every write, a pure function of the
    /// transaction: it may run more than once, only one run is committed.
    fn apply(txn: &WriteTransaction, items: &[Self::Item]) -> Result<Vec<Result<Self::Out>>>;
}

/// The items of one kind waiting in a group, with their callers.
pub(super) struct Joined<J: Join> {
    items: Vec<J::Item>,
    replies: Vec<oneshot::Sender<Result<J::Out>>>,
    outs: Vec<Result<J::Out>>,
    kind: PhantomData<fn() -> J>,
}

impl<J: Join> Joined<J> {
    pub(super) fn new(item: J::Item, reply: oneshot::Sender<Result<J::Out>>) -> Self {
        Joined {
            items: vec![item],
            replies: vec![reply],
            outs: Vec::new(),
            kind: PhantomData,
        }
    }
}

impl<J: Join> WriteOp for Joined<J> {
    fn apply(&mut self, txn: &WriteTransaction) -> Result<()> {
        // As for any write: a panic fails this write alone, not the writer thread.
        let run =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| J::apply(txn, &self.items)));
        let outs = run.map_err(|_| Error::Task("a store write panicked".into()))??;
        if outs.len() != self.items.len() {
            return Err(Error::Task(format!(
                "a joined write answered {} of {} items",
                outs.len(),
                self.items.len()
            )));
        }
        self.outs = outs;
        Ok(())
    }

    fn relaxed(&self) -> bool {
        false
    }

    fn reply(self: Box<Self>, outcome: Result<()>) {
        let Joined { replies, outs, .. } = *self;
        match outcome {
            Ok(()) => {
                for (reply, out) in replies.into_iter().zip(outs) {
                    let _ = reply.send(out);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn kind(&self) -> Option<TypeId> {
        Some(TypeId::of::<Joined<J>>())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }

    fn absorb(&mut self, other: Box<dyn WriteOp>) -> std::result::Result<(), Box<dyn WriteOp>> {
        if other.kind() != self.kind() {
            return Err(other);
        }
        match other.into_any().downcast::<Joined<J>>() {
            Ok(other) => {
                let Joined { items, replies, .. } = *other;
                self.items.extend(items);
                self.replies.extend(replies);
                Ok(())
            }
            // Unreachable: the kinds are equal. Its callers are answered as closed.
            Err(_) => Ok(()),
        }
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn WriteOp>> {
        let Joined { items, replies, .. } = *self;
        items
            .into_iter()
            .zip(replies)
            .map(|(item, reply)| Box::new(Joined::<J>::new(item, reply)) as Box<dyn WriteOp>)
            .collect()
    }

    fn parts(&self) -> usize {
        self.items.len()
    }
}

/// Joins the writes of one kind in `group` into the first of that kind (plain writes keep
/// their places). The group commits in one transaction, so the order of independent
/// callers' writes within it is not theirs to rely on.
pub(super) fn join(group: Vec<Box<dyn WriteOp>>) -> Vec<Box<dyn WriteOp>> {
    let mut out: Vec<Box<dyn WriteOp>> = Vec::with_capacity(group.len());
    for op in group {
        let Some(kind) = op.kind() else {
            out.push(op);
            continue;
        };
        match out.iter_mut().find(|o| o.kind() == Some(kind)) {
            Some(first) => {
                if let Err(op) = first.absorb(op) {
                    out.push(op);
                }
            }
            None => out.push(op),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{commit_group, tables, Durability};
    use redb::ReadableTable;

    /// Writes each item's key into META and answers how many items its call carried; the
    /// key "bad" fails its item alone, "boom" fails the whole call.
    struct Keys;

    impl Join for Keys {
        type Item = &'static str;
        type Out = usize;

        fn apply(txn: &WriteTransaction, items: &[&'static str]) -> Result<Vec<Result<usize>>> {
            if items.contains(&"boom") {
                return Err(Error::Invalid("boom fails the call".into()));
            }
            let mut meta = txn.open_table(tables::META)?;
            Ok(items
                .iter()
                .map(|&key| match key {
                    "bad" => Err(Error::Invalid("bad fails alone".into())),
                    _ => {
                        meta.insert(key, 1)?;
                        Ok(items.len())
                    }
                })
                .collect())
        }
    }

    fn joined(key: &'static str) -> (Box<dyn WriteOp>, oneshot::Receiver<Result<usize>>) {
        let (reply, rx) = oneshot::channel();
        (Box::new(Joined::<Keys>::new(key, reply)), rx)
    }

    fn outcomes(replies: Vec<oneshot::Receiver<Result<usize>>>) -> Vec<Result<usize>> {
        replies
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect()
    }

    fn keys(db: &redb::Database) -> Vec<String> {
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(tables::META).unwrap();
        let mut keys: Vec<String> = table
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value().to_string())
            .filter(|k| k.len() == 1)
            .collect();
        keys.sort();
        keys
    }

    fn db() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db.redb")).unwrap();
        (dir, db)
    }

    #[test]
    fn writes_of_one_kind_in_a_group_are_applied_in_one_call_and_each_caller_gets_its_own_outcome()
    {
        let (_dir, db) = db();
        let (ops, replies): (Vec<_>, Vec<_>) = [joined("a"), joined("bad"), joined("b")]
            .into_iter()
            .unzip();
        let ops = join(ops);
        assert_eq!(ops.len(), 1);
        commit_group(&db, ops, Durability::Immediate);
        let outs = outcomes(replies);
        // Each item's answer is the size of its call: one call carried all three.
        assert!(matches!(outs[0], Ok(3)), "{:?}", outs[0]);
        assert!(matches!(&outs[1], Err(Error::Invalid(m)) if m.contains("alone")));
        assert!(matches!(outs[2], Ok(3)), "{:?}", outs[2]);
        assert_eq!(keys(&db), ["a", "b"]);
    }

    #[test]
    fn a_joined_write_that_fails_as_a_whole_is_retried_item_by_item() {
        let (_dir, db) = db();
        let (ops, replies): (Vec<_>, Vec<_>) = [joined("c"), joined("boom"), joined("d")]
            .into_iter()
            .unzip();
        commit_group(&db, join(ops), Durability::Immediate);
        let outs = outcomes(replies);
        assert!(matches!(outs[0], Ok(1)), "{:?}", outs[0]);
        assert!(matches!(&outs[1], Err(Error::Invalid(m)) if m.contains("boom")));
        assert!(matches!(outs[2], Ok(1)), "{:?}", outs[2]);
        assert_eq!(keys(&db), ["c", "d"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_through_the_store_each_get_their_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(crate::store::StoreConfig::new(dir.path().join("db.redb")))
                .unwrap();
        let names = ["e", "f", "g", "h", "i", "j", "k", "l"];
        let calls: Vec<_> = names
            .iter()
            .map(|&k| {
                let store = store.clone();
                tokio::spawn(async move { store.write_joined::<Keys>(k).await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().unwrap() >= 1);
        }
        let written = store
            .read_blocking(|txn| {
                let table = txn.open_table(tables::META)?;
                Ok(names
                    .iter()
                    .filter(|k| table.get(**k).ok().flatten().is_some())
                    .count())
            })
            .unwrap();
        assert_eq!(written, names.len());
    }
}
