//! A map from region to a learned value that holds at most about `cap`
//! entries: two generations, the young one taking inserts. When the young one
//! is full the old one is dropped and the young one becomes old, so what was
//! not used for a whole generation is forgotten (an approximate LRU with O(1)
//! operations and no per-entry bookkeeping).

use rustc_hash::FxHashMap as HashMap;

#[derive(Debug)]
pub(super) struct BoundedMap<V> {
    young: HashMap<u64, V>,
    old: HashMap<u64, V>,
    generation: usize,
}

impl<V> BoundedMap<V> {
    /// A map of at most `cap` entries (at least 2).
    pub(super) fn new(cap: usize) -> Self {
        BoundedMap {
            young: HashMap::default(),
            old: HashMap::default(),
            generation: (cap / 2).max(1),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub(super) fn get(&self, k: u64) -> Option<&V> {
        self.young.get(&k).or_else(|| self.old.get(&k))
    }

    /// The value of `k` for update, moved to the young generation; inserted
    /// with `default()` when absent.
    pub(super) fn entry(&mut self, k: u64, default: impl FnOnce() -> V) -> &mut V {
        if !self.young.contains_key(&k) {
            let v = self.old.remove(&k).unwrap_or_else(default);
            self.make_room();
            self.young.insert(k, v);
        }
        self.young.get_mut(&k).expect("just inserted")
    }

    pub(super) fn insert(&mut self, k: u64, v: V) {
        self.old.remove(&k);
        if !self.young.contains_key(&k) {
            self.make_room();
        }
        self.young.insert(k, v);
    }

    fn make_room(&mut self) {
        if self.young.len() >= self.generation {
            self.old = std::mem::take(&mut self.young);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_cap_and_keeps_what_is_used() {
        let mut m = BoundedMap::new(8);
        for k in 0..4 {
            *m.entry(k, || 0) = k;
        }
        // Touching 0 moves it to the young generation, so it survives.
        for k in 4..8 {
            *m.entry(k, || 0) = k;
            let _ = m.entry(0, || 0);
        }
        assert!(m.len() <= 8);
        assert_eq!(m.get(0), Some(&0));
        assert_eq!(m.get(7), Some(&7));
        assert_eq!(m.get(1), None, "not used for a generation: forgotten");
        for k in 100..1000 {
            *m.entry(k, || 0) = k;
            assert!(m.len() <= 8);
        }
    }
}
