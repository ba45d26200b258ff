//! What this instance knows of the keys under the prefix, key by key, with the
//! revision each was last written at: the watch's view, with this instance's
//! own acknowledged writes laid over it until the watch brings them.
//!
//! Why per key: a write is guarded by the revisions of the keys it changes
//! (see `ClusterStore::save`), not by the revision of the whole prefix, so that
//! instances changing different servers do not refuse each other. The guard
//! must name the revision of the value the table's change was computed from;
//! this is where those revisions come from.
//!
//! Why own writes are laid over the watch's view: an instance's write is in
//! force locally when the API answers, a few milliseconds before its own watch
//! brings it. A view taken in between must not undo it; and since every key's
//! history is ordered by revision, the newer revision of a key wins, from
//! whichever side it came.
//!
//! Pure data, no I/O.

use std::collections::BTreeMap;

use super::keys::Kvs;

/// The most changes the journal keeps for a table that does not catch up
/// (one whose follows keep failing): past it, only a whole follow helps.
const JOURNAL_MAX: usize = 4096;

/// A key's value (`None`: deleted) and the revision that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: Option<Vec<u8>>,
    revision: u64,
}

#[derive(Debug, Default)]
pub(crate) struct View {
    keys: BTreeMap<String, Entry>,
    /// Bumped by every change, so that a table that took the view at one
    /// version can tell whether it still is the view.
    version: u64,
    /// The newest revision the watch (or a full read) delivered.
    watched: u64,
    /// The key and revision of each change after version `journal_from`, in
    /// order (entry `i` made version `journal_from + i + 1`): what a table
    /// that holds an older version is missing. A full read starts it anew.
    journal: Vec<(String, u64)>,
    journal_from: u64,
}

/// Live keys and the revision each was last written at.
pub(crate) type Revisions = BTreeMap<String, u64>;

impl View {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn watched(&self) -> u64 {
        self.watched
    }

    /// Everything under the prefix as a full read at `revision` found it.
    /// Own writes newer than the read stay (the read cannot have seen them).
    pub fn reset(&mut self, entries: Vec<(String, Vec<u8>, u64)>, revision: u64) {
        let mut keys: BTreeMap<String, Entry> = entries
            .into_iter()
            .map(|(k, v, r)| {
                (
                    k,
                    Entry {
                        value: Some(v),
                        revision: r,
                    },
                )
            })
            .collect();
        for (k, e) in &self.keys {
            if e.revision > revision {
                keys.insert(k.clone(), e.clone());
            }
        }
        self.keys = keys;
        self.watched = self.watched.max(revision);
        self.version += 1;
        self.journal.clear();
        self.journal_from = self.version;
    }

    /// One event from the watch (`value` `None`: a delete); whether it
    /// changed the view (an own write the watch brings back does not).
    pub fn event(&mut self, key: String, value: Option<Vec<u8>>, revision: u64) -> bool {
        self.watched = self.watched.max(revision);
        self.put(key, value, revision)
    }

    /// The watch has seen everything up to `revision` (a progress note).
    pub fn watched_to(&mut self, revision: u64) {
        self.watched = self.watched.max(revision);
    }

    /// This instance's own write, acknowledged at `revision`.
    pub fn own_write(&mut self, puts: &[(String, Vec<u8>)], deletes: &[String], revision: u64) {
        for (k, v) in puts {
            self.put(k.clone(), Some(v.clone()), revision);
        }
        for k in deletes {
            self.put(k.clone(), None, revision);
        }
    }

    fn put(&mut self, key: String, value: Option<Vec<u8>>, revision: u64) -> bool {
        if let Some(e) = self.keys.get(&key)
            && e.revision >= revision
        {
            return false;
        }
        if self.journal.len() >= JOURNAL_MAX {
            // A table that stays this far behind follows the whole view.
            self.journal.clear();
            self.journal_from = self.version + 1;
        } else {
            self.journal.push((key.clone(), revision));
        }
        self.keys.insert(key, Entry { value, revision });
        self.version += 1;
        true
    }

    /// Whether every change after `version` was made by the transaction at
    /// `revision` to one of `keys`: then a table that held `version` and has
    /// applied that transaction holds the view as it is now. False when the
    /// journal does not reach back to `version`.
    pub fn only_since(&self, version: u64, revision: u64, keys: &dyn Fn(&str) -> bool) -> bool {
        if version < self.journal_from || version > self.version {
            return false;
        }
        let skip = usize::try_from(version - self.journal_from).unwrap_or(usize::MAX);
        self.journal
            .get(skip..)
            .is_some_and(|rest| rest.iter().all(|(k, r)| *r == revision && keys(k)))
    }

    /// A table holds `version`: the journal before it is no longer needed.
    pub fn held(&mut self, version: u64) {
        if version <= self.journal_from || version > self.version {
            return;
        }
        let n = usize::try_from(version - self.journal_from).unwrap_or(usize::MAX);
        self.journal.drain(..n.min(self.journal.len()));
        self.journal_from = version;
    }

    /// The live keys and their values, and their revisions. Forgets deletes
    /// the watch has gone past (nothing older can come for them any more).
    pub fn snapshot(&mut self) -> (Kvs, Revisions) {
        let watched = self.watched;
        self.keys
            .retain(|_, e| e.value.is_some() || e.revision > watched);
        let mut kvs = Kvs::new();
        let mut revs = Revisions::new();
        for (k, e) in &self.keys {
            if let Some(v) = &e.value {
                kvs.insert(k.clone(), v.clone());
                revs.insert(k.clone(), e.revision);
            }
        }
        (kvs, revs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str, r: u64) -> (String, Vec<u8>, u64) {
        (k.into(), v.as_bytes().to_vec(), r)
    }

    #[test]
    fn the_newer_revision_of_a_key_wins_from_either_side() {
        let mut v = View::default();
        v.reset(vec![kv("/p/a", "1", 5), kv("/p/b", "1", 6)], 6);
        // Own write at 9 (a), the watch then brings 7 (b, someone else) and 8
        // (a, someone else, older than ours) and 9 (ours again).
        v.own_write(&[("/p/a".into(), b"mine".to_vec())], &[], 9);
        assert!(v.event("/p/b".into(), Some(b"2".to_vec()), 7));
        assert!(!v.event("/p/a".into(), Some(b"old".to_vec()), 8));
        let before = v.version();
        assert!(!v.event("/p/a".into(), Some(b"mine".to_vec()), 9));
        assert_eq!(
            v.version(),
            before,
            "an own write coming back changes nothing"
        );
        let (kvs, revs) = v.snapshot();
        assert_eq!(kvs["/p/a"], b"mine");
        assert_eq!(kvs["/p/b"], b"2");
        assert_eq!(revs["/p/a"], 9);
        assert_eq!(revs["/p/b"], 7);
        assert_eq!(v.watched(), 9);
    }

    #[test]
    fn the_journal_tells_whether_only_one_transaction_changed_the_view() {
        let mut v = View::default();
        v.reset(vec![kv("/p/a", "1", 5)], 5);
        let held = v.version();
        // The watch brings this instance's own write (at 9) before its answer.
        assert!(v.event("/p/b".into(), Some(b"x".to_vec()), 9));
        assert!(v.event("/p/c".into(), Some(b"y".to_vec()), 9));
        let mine = |k: &str| k == "/p/b" || k == "/p/c";
        assert!(v.only_since(held, 9, &mine));
        assert!(!v.only_since(held, 8, &mine), "another revision");
        assert!(
            !v.only_since(held, 9, &|k| k == "/p/b"),
            "a key not written"
        );
        // Someone else's change as well: the table must follow.
        assert!(v.event("/p/a".into(), Some(b"z".to_vec()), 10));
        assert!(!v.only_since(held, 9, &mine));
        v.held(v.version());
        assert!(v.journal.is_empty());
        assert!(v.only_since(v.version(), 11, &mine), "nothing since");
        v.reset(Vec::new(), 12);
        assert!(
            !v.only_since(held, 9, &mine),
            "a full read: no journal back there"
        );
    }

    #[test]
    fn a_delete_is_remembered_until_the_watch_passes_it() {
        let mut v = View::default();
        v.reset(vec![kv("/p/a", "1", 5)], 5);
        v.own_write(&[], &["/p/a".into()], 7);
        // The watch is still at 6: an older put of `a` must not bring it back.
        assert!(!v.event("/p/a".into(), Some(b"x".to_vec()), 6));
        let (kvs, _) = v.snapshot();
        assert!(kvs.is_empty());
        v.watched_to(7);
        let _ = v.snapshot();
        assert!(v.keys.is_empty(), "the tombstone is gone once passed");
    }

    #[test]
    fn a_full_read_keeps_own_writes_it_could_not_have_seen() {
        let mut v = View::default();
        v.own_write(&[("/p/new".into(), b"n".to_vec())], &[], 12);
        v.reset(vec![kv("/p/a", "1", 5)], 10);
        let (kvs, revs) = v.snapshot();
        assert_eq!(kvs.len(), 2);
        assert_eq!(revs["/p/new"], 12);
    }
}
