//! What one target host holds against sessions, for ban scope "domain": a set of slots, each
//! either failing (a run of consecutive failures) or cooling (blacklisted until a time). Every
//! host's set is a treap keyed by slot whose nodes live in one arena shared by all hosts (the
//! `Forest`), so memory follows the records held, however they are spread over hosts.
//!
//! Why a treap and not a sorted `Vec`: a pick needs the k-th slot that is *not* cooling for the
//! host, which a sorted sequence answers by binary search, but inserting into or removing from a
//! sorted `Vec` moves every later element: with a large pool banned by one site, each blacklist
//! and each expiry would cost a copy proportional to the pool. The treap does every operation
//! in O(log c) expected (c = records of the host), with subtree counts of cooling slots (for
//! the rank queries) and the earliest cooldown end of each subtree (for the expiries).

/// No node.
pub const NIL: u32 = u32::MAX;
/// Marks a cooling record in `Node::own`; the other bits are its cooldown's end.
const COOLING: u64 = 1 << 63;
/// Cooldown ends are capped below `COOLING` (292 years of nanoseconds: as good as never).
const MAX_UNTIL: u64 = COOLING - 1;

/// What a host holds against one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Consecutive failures for the host (at least one), not yet a blacklist.
    Failing(u32),
    /// Blacklisted for the host until this time (clock nanoseconds).
    Cooling(u64),
}

impl Entry {
    fn encode(self) -> u64 {
        match self {
            Self::Failing(fails) => u64::from(fails),
            Self::Cooling(until) => COOLING | until.min(MAX_UNTIL),
        }
    }

    fn decode(own: u64) -> Self {
        if own & COOLING != 0 {
            Self::Cooling(own & !COOLING)
        } else {
            Self::Failing(own as u32)
        }
    }
}

/// 32 bytes.
#[derive(Debug, Clone, Copy)]
struct Node {
    slot: u32,
    left: u32,
    right: u32,
    /// Cooling records in this subtree.
    cooling: u32,
    /// The record, `Entry::encode`d.
    own: u64,
    /// The earliest cooldown end in this subtree; `u64::MAX` when nothing in it cools.
    first_until: u64,
}

pub const NODE_BYTES: usize = std::mem::size_of::<Node>();

/// A node's heap priority, from its slot: a bijective mix (murmur3's finaliser), so the tree's
/// shape is as random as with stored priorities, without storing them.
fn priority(slot: u32) -> u32 {
    let mut h = slot;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The arena of every host's tree. A tree is named by its root (`NIL` when empty), which the
/// caller keeps; freed nodes are reused by any tree.
#[derive(Debug)]
pub struct Forest {
    nodes: Vec<Node>,
    /// Head of the list of freed nodes, linked through `left`.
    free: u32,
    used: usize,
    /// The arena never holds room for more nodes than this.
    limit: usize,
}

impl Forest {
    pub fn new(limit: usize) -> Self {
        Self {
            nodes: Vec::new(),
            free: NIL,
            used: 0,
            limit,
        }
    }

    /// Nodes in use, over all trees.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Bytes the arena holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * NODE_BYTES
    }

    /// The record of `slot` in the tree.
    pub fn get(&self, root: u32, slot: u32) -> Option<Entry> {
        let mut t = root;
        while t != NIL {
            let node = &self.nodes[t as usize];
            if slot == node.slot {
                return Some(Entry::decode(node.own));
            }
            t = if slot < node.slot {
                node.left
            } else {
                node.right
            };
        }
        None
    }

    /// Sets the record of `slot`; returns true if the tree had none (a node was taken).
    pub fn set(&mut self, root: &mut u32, slot: u32, entry: Entry) -> bool {
        if self.update(*root, slot, entry.encode()) {
            return false;
        }
        let node = self.alloc(slot, entry.encode());
        *root = self.insert(*root, node);
        true
    }

    /// Removes the record of `slot` and frees its node.
    pub fn remove(&mut self, root: &mut u32, slot: u32) -> Option<Entry> {
        let (rest, removed) = self.take(*root, slot);
        *root = rest;
        (removed != NIL).then(|| {
            let entry = Entry::decode(self.nodes[removed as usize].own);
            self.release(removed);
            entry
        })
    }

    /// How many slots cool in the tree.
    pub fn cooling(&self, root: u32) -> u32 {
        if root == NIL {
            0
        } else {
            self.nodes[root as usize].cooling
        }
    }

    /// The earliest cooldown end in the tree.
    pub fn first_until(&self, root: u32) -> Option<u64> {
        (root != NIL && self.nodes[root as usize].cooling > 0)
            .then(|| self.nodes[root as usize].first_until)
    }

    /// The cooling slot whose cooldown ends first, and when.
    pub fn first_back(&self, root: u32) -> Option<(u32, u64)> {
        let until = self.first_until(root)?;
        let mut t = root;
        loop {
            let node = &self.nodes[t as usize];
            if node.own == COOLING | until {
                return Some((node.slot, until));
            }
            t = if node.left != NIL && self.nodes[node.left as usize].first_until == until {
                node.left
            } else {
                node.right
            };
        }
    }

    /// Removes one cooling record whose cooldown ended at or before `now` (the earliest) and
    /// returns its slot; `None` if none has ended.
    pub fn pop_expired(&mut self, root: &mut u32, now: u64) -> Option<u32> {
        let (slot, _) = self.first_back(*root).filter(|&(_, until)| until <= now)?;
        self.remove(root, slot);
        Some(slot)
    }

    /// The `k`-th slot (from 0, in slot order) that does not cool in the tree. Needs `k` below
    /// the number of such slots. O(depth): the slots that cool before a node's slot are its
    /// rank among the cooling ones, so the free slots before it are its slot minus that rank.
    pub fn nth_not_cooling(&self, root: u32, k: u32) -> u32 {
        let mut t = root;
        // Cooling slots before the current subtree.
        let mut before = 0;
        while t != NIL {
            let node = &self.nodes[t as usize];
            let rank = before + self.cooling(node.left);
            let free_before = node.slot - rank;
            if node.own & COOLING != 0 {
                if free_before <= k {
                    before = rank + 1;
                    t = node.right;
                } else {
                    t = node.left;
                }
            } else if free_before == k {
                return node.slot;
            } else if free_before < k {
                before = rank;
                t = node.right;
            } else {
                t = node.left;
            }
        }
        k + before
    }

    /// How many slots below `slot` cool in the tree.
    pub fn cooling_before(&self, root: u32, slot: u32) -> u32 {
        let mut t = root;
        let mut before = 0;
        while t != NIL {
            let node = &self.nodes[t as usize];
            if node.slot < slot {
                before += self.cooling(node.left) + u32::from(node.own & COOLING != 0);
                t = node.right;
            } else {
                t = node.left;
            }
        }
        before
    }

    /// Calls `visit` with each record of the tree, in no particular order.
    pub fn visit(&self, root: u32, mut visit: impl FnMut(u32, Entry)) {
        let mut stack = Vec::new();
        if root != NIL {
            stack.push(root);
        }
        while let Some(t) = stack.pop() {
            let node = &self.nodes[t as usize];
            stack.extend([node.left, node.right].into_iter().filter(|&c| c != NIL));
            visit(node.slot, Entry::decode(node.own));
        }
    }

    /// Frees every node of the tree, calling `visit` with each record.
    pub fn clear(&mut self, root: &mut u32, mut visit: impl FnMut(u32, Entry)) {
        let mut stack = Vec::new();
        if *root != NIL {
            stack.push(*root);
        }
        *root = NIL;
        while let Some(t) = stack.pop() {
            let node = self.nodes[t as usize];
            stack.extend([node.left, node.right].into_iter().filter(|&c| c != NIL));
            visit(node.slot, Entry::decode(node.own));
            self.release(t);
        }
    }

    fn alloc(&mut self, slot: u32, own: u64) -> u32 {
        let node = Node {
            slot,
            left: NIL,
            right: NIL,
            cooling: 0,
            own,
            first_until: u64::MAX,
        };
        self.used += 1;
        let t = if self.free == NIL {
            debug_assert!(self.nodes.len() < self.limit, "the caller makes room");
            if self.nodes.len() == self.nodes.capacity() {
                // Grows as a Vec does, but never past the limit.
                let more = self.nodes.len().max(16).min(self.limit - self.nodes.len());
                self.nodes.reserve_exact(more.max(1));
            }
            self.nodes.push(node);
            self.nodes.len() - 1
        } else {
            let t = self.free as usize;
            self.free = self.nodes[t].left;
            self.nodes[t] = node;
            t
        };
        self.pull(t as u32);
        t as u32
    }

    fn release(&mut self, t: u32) {
        self.used -= 1;
        self.nodes[t as usize].left = self.free;
        self.free = t;
    }

    /// Recomputes the node's subtree aggregates from its own record and its children's.
    fn pull(&mut self, t: u32) {
        let node = self.nodes[t as usize];
        let (mut cooling, mut first_until) = match Entry::decode(node.own) {
            Entry::Cooling(until) => (1, until),
            Entry::Failing(_) => (0, u64::MAX),
        };
        for child in [node.left, node.right] {
            if child != NIL {
                let child = &self.nodes[child as usize];
                cooling += child.cooling;
                first_until = first_until.min(child.first_until);
            }
        }
        let node = &mut self.nodes[t as usize];
        node.cooling = cooling;
        node.first_until = first_until;
    }

    /// Sets the record of `slot` if the tree has one, fixing the aggregates on the way back.
    fn update(&mut self, t: u32, slot: u32, own: u64) -> bool {
        if t == NIL {
            return false;
        }
        let node = self.nodes[t as usize];
        let found = if slot == node.slot {
            self.nodes[t as usize].own = own;
            true
        } else if slot < node.slot {
            self.update(node.left, slot, own)
        } else {
            self.update(node.right, slot, own)
        };
        if found {
            self.pull(t);
        }
        found
    }

    /// Inserts the lone node `new` (whose slot is not in the tree); returns the new root.
    fn insert(&mut self, t: u32, new: u32) -> u32 {
        if t == NIL {
            return new;
        }
        let slot = self.nodes[new as usize].slot;
        let node = self.nodes[t as usize];
        if priority(slot) > priority(node.slot) {
            let (less, more) = self.split(t, slot);
            self.nodes[new as usize].left = less;
            self.nodes[new as usize].right = more;
            self.pull(new);
            return new;
        }
        if slot < node.slot {
            let left = self.insert(node.left, new);
            self.nodes[t as usize].left = left;
        } else {
            let right = self.insert(node.right, new);
            self.nodes[t as usize].right = right;
        }
        self.pull(t);
        t
    }

    /// Unlinks the node of `slot`: (the new root, the unlinked node or `NIL`).
    fn take(&mut self, t: u32, slot: u32) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        let node = self.nodes[t as usize];
        if slot == node.slot {
            return (self.merge(node.left, node.right), t);
        }
        let taken = if slot < node.slot {
            let (left, taken) = self.take(node.left, slot);
            self.nodes[t as usize].left = left;
            taken
        } else {
            let (right, taken) = self.take(node.right, slot);
            self.nodes[t as usize].right = right;
            taken
        };
        if taken != NIL {
            self.pull(t);
        }
        (t, taken)
    }

    /// Splits the tree into the slots below `slot` and the others.
    fn split(&mut self, t: u32, slot: u32) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        let node = self.nodes[t as usize];
        if node.slot < slot {
            let (less, more) = self.split(node.right, slot);
            self.nodes[t as usize].right = less;
            self.pull(t);
            (t, more)
        } else {
            let (less, more) = self.split(node.left, slot);
            self.nodes[t as usize].left = more;
            self.pull(t);
            (less, t)
        }
    }

    /// Joins two trees, every slot of `a` below every slot of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if priority(self.nodes[a as usize].slot) > priority(self.nodes[b as usize].slot) {
            let right = self.merge(self.nodes[a as usize].right, b);
            self.nodes[a as usize].right = right;
            self.pull(a);
            a
        } else {
            let left = self.merge(a, self.nodes[b as usize].left);
            self.nodes[b as usize].left = left;
            self.pull(b);
            b
        }
    }

    #[cfg(test)]
    fn depth(&self, t: u32) -> usize {
        if t == NIL {
            0
        } else {
            let node = &self.nodes[t as usize];
            1 + self.depth(node.left).max(self.depth(node.right))
        }
    }

    /// Checks order, heap order and aggregates; returns the records in slot order.
    #[cfg(test)]
    pub(crate) fn check(&self, root: u32) -> Vec<(u32, Entry)> {
        fn walk(forest: &Forest, t: u32, out: &mut Vec<(u32, Entry)>) -> (u32, u64) {
            if t == NIL {
                return (0, u64::MAX);
            }
            let node = forest.nodes[t as usize];
            for child in [node.left, node.right] {
                if child != NIL {
                    assert!(priority(forest.nodes[child as usize].slot) <= priority(node.slot));
                }
            }
            let (left_cooling, left_first) = walk(forest, node.left, out);
            out.push((node.slot, Entry::decode(node.own)));
            let (right_cooling, right_first) = walk(forest, node.right, out);
            let (own_cooling, own_first) = match Entry::decode(node.own) {
                Entry::Cooling(until) => (1, until),
                Entry::Failing(fails) => {
                    assert!(fails > 0);
                    (0, u64::MAX)
                }
            };
            let cooling = left_cooling + right_cooling + own_cooling;
            let first = left_first.min(right_first).min(own_first);
            assert_eq!((node.cooling, node.first_until), (cooling, first));
            (cooling, first)
        }
        let mut out = Vec::new();
        walk(self, root, &mut out);
        assert!(out.windows(2).all(|pair| pair[0].0 < pair[1].0));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn a_node_is_32_bytes() {
        assert_eq!(NODE_BYTES, 32);
    }

    #[test]
    fn random_operations_match_a_btreemap_on_several_trees() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut forest = Forest::new(usize::MAX);
        let mut roots = [NIL; 3];
        let mut models: [BTreeMap<u32, Entry>; 3] = Default::default();
        for step in 0..30_000u64 {
            let tree = rng.random_range(0..3);
            let slot = rng.random_range(0..200);
            let (root, model) = (&mut roots[tree], &mut models[tree]);
            match rng.random_range(0..10) {
                0..=3 => {
                    let entry = if rng.random_bool(0.5) {
                        Entry::Failing(rng.random_range(1..5))
                    } else {
                        Entry::Cooling(step + rng.random_range(0..1000))
                    };
                    assert_eq!(
                        forest.set(root, slot, entry),
                        model.insert(slot, entry).is_none()
                    );
                }
                4..=5 => assert_eq!(forest.remove(root, slot), model.remove(&slot)),
                6 => {
                    let expired = forest.pop_expired(root, step);
                    let first = model
                        .iter()
                        .filter_map(|(&s, e)| match e {
                            Entry::Cooling(until) => Some((*until, s)),
                            Entry::Failing(_) => None,
                        })
                        .min();
                    match first {
                        Some((until, _)) if until <= step => {
                            let slot = expired.expect("one has expired");
                            assert_eq!(model.remove(&slot), Some(Entry::Cooling(until)));
                        }
                        _ => assert_eq!(expired, None),
                    }
                }
                _ => {
                    let cooling: Vec<u32> = model
                        .iter()
                        .filter(|(_, e)| matches!(e, Entry::Cooling(_)))
                        .map(|(&s, _)| s)
                        .collect();
                    assert_eq!(forest.cooling(*root) as usize, cooling.len());
                    assert_eq!(forest.get(*root, slot), model.get(&slot).copied());
                    assert_eq!(
                        forest.cooling_before(*root, slot) as usize,
                        cooling.iter().filter(|&&s| s < slot).count()
                    );
                    let free: Vec<u32> = (0..300).filter(|s| !cooling.contains(s)).collect();
                    let k = rng.random_range(0..free.len() as u32);
                    assert_eq!(forest.nth_not_cooling(*root, k), free[k as usize]);
                }
            }
        }
        for (root, model) in roots.iter().zip(&models) {
            let records = forest.check(*root);
            assert_eq!(
                records,
                model.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>()
            );
        }
        let held: usize = models.iter().map(BTreeMap::len).sum();
        assert_eq!(forest.used(), held);
        for root in &mut roots {
            forest.clear(root, |_, _| {});
        }
        assert_eq!(forest.used(), 0);
    }

    #[test]
    fn the_kth_free_slot_skips_cooling_and_not_failing_slots() {
        let mut forest = Forest::new(16);
        let mut root = NIL;
        for slot in [2, 3, 7] {
            forest.set(&mut root, slot, Entry::Cooling(10));
        }
        forest.set(&mut root, 5, Entry::Failing(1));
        let free: Vec<u32> = (0..7).map(|k| forest.nth_not_cooling(root, k)).collect();
        assert_eq!(free, [0, 1, 4, 5, 6, 8, 9]);
        assert_eq!(forest.first_until(root), Some(10));
    }

    #[test]
    fn a_sequential_million_stays_shallow() {
        let mut forest = Forest::new(1 << 20);
        let mut root = NIL;
        for slot in 0..1_000_000 {
            forest.set(&mut root, slot, Entry::Cooling(u64::from(slot)));
        }
        // 2 ln n is about 28 for a random treap; a sorted insert order must not degrade it.
        assert!(forest.depth(root) < 60, "depth {}", forest.depth(root));
        assert_eq!(forest.nth_not_cooling(root, 0), 1_000_000);
        assert!(forest.heap_bytes() <= NODE_BYTES << 20);
        assert_eq!(forest.pop_expired(&mut root, 1), Some(0));
        assert_eq!(forest.pop_expired(&mut root, 1), Some(1));
        assert_eq!(forest.pop_expired(&mut root, 1), None);
        assert_eq!(forest.nth_not_cooling(root, 1), 1);
    }
}
