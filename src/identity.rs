//! Fresh identities: which id each slot of the pool goes by now, and when it gets a new one.
//!
//! A gateway keys its sticky IP on the session id, so a new id is a new identity. A slot's id
//! is its *session number*: generation 0 is the plain index ("s007"); generation g >= 1 is
//! `index + (epoch + g) * pool_size`, a number no slot ever had (numbers of different slots
//! differ modulo the pool size; of one slot, by generation). The epoch is drawn per crawl, so a
//! restarted crawl does not hand out the rotated ids of the last one again while the gateway
//! may still hold their (banned) IPs; it is 0 when the picks are seeded, for reproducible ids.
//!
//! Only what the settings switch on is kept, per slot: the generation (4 bytes) with any kind
//! of rotation, the uses of the current id (4 bytes) with `HEX_PROXY_SESSION_MAX_USES`, its
//! first use (4 bytes) with `HEX_PROXY_SESSION_MAX_AGE`. With none of them there is no
//! `Identities` at all and every number is a slot index.

use std::time::Duration;

use crate::clock::saturating_ns;

/// What `HEX_PROXY_ON_BLACKLIST` asks for when a session reaches `HEX_PROXY_MAX_FAILURES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBlacklist {
    /// The session rests for `HEX_PROXY_BLACKLIST_COOLDOWN`.
    #[default]
    Cooldown,
    /// The slot takes a new, never-used id at once and stays live.
    Rotate,
}

/// First uses are kept in tenths of a second since the clock started (a u32 lasts 13 years);
/// an id is rotated at most this much before `max_age` is up, never after.
const BIRTH_UNIT_NS: u64 = 100_000_000;
/// In `births`: the current id has not been handed out yet.
const UNUSED: u32 = 0;

#[derive(Debug)]
pub struct Identities {
    pool_size: u32,
    /// Each slot's generation. Saturates: a slot rotated 2^32 - 1 times keeps its last id.
    generations: Vec<u32>,
    /// Hand-outs of each slot's current id; empty unless `max_uses` is set.
    uses: Vec<u32>,
    max_uses: u32,
    /// When each slot's current id was first handed out, in `BIRTH_UNIT_NS` plus one (`UNUSED`
    /// before); empty unless `max_age` is set.
    births: Vec<u32>,
    max_age_ns: u64,
    /// Generations >= 1 are numbered from here on (see the module doc).
    epoch: u64,
}

impl Identities {
    /// `None` when no rotation can happen: then the pool needs no memory for identities.
    pub fn new(
        pool_size: u32,
        on_blacklist: OnBlacklist,
        max_uses: u32,
        max_age: Duration,
    ) -> Option<Self> {
        if on_blacklist == OnBlacklist::Cooldown && max_uses == 0 && max_age.is_zero() {
            return None;
        }
        let per_slot = |on: bool| vec![0; if on { pool_size as usize } else { 0 }];
        Some(Self {
            pool_size,
            generations: vec![0; pool_size as usize],
            uses: per_slot(max_uses > 0),
            max_uses,
            births: per_slot(!max_age.is_zero()),
            max_age_ns: saturating_ns(max_age),
            epoch: 0,
        })
    }

    /// Numbers generations >= 1 from `epoch` (below 2^31) on.
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// The session number `slot` goes by now.
    pub fn number(&self, slot: u32) -> u64 {
        self.number_of(slot, self.generations[slot as usize])
    }

    /// The session number of `slot` in `generation`.
    fn number_of(&self, slot: u32, generation: u32) -> u64 {
        Numbering::new(self.pool_size, self.epoch).number(slot, generation)
    }

    pub fn generation(&self, slot: u32) -> u32 {
        self.generations[slot as usize]
    }

    /// Hands `slot`'s id out for one attempt at time `now`, first giving the slot a new id if
    /// the current one was handed out `max_uses` times or first handed out `max_age` ago.
    /// Returns the number handed out and whether the slot was rotated for it. O(1).
    pub fn hand_out(&mut self, slot: u32, now: u64) -> (u64, bool) {
        let i = slot as usize;
        let used_up = self.max_uses > 0 && self.uses[i] >= self.max_uses;
        let too_old = self.max_age_ns > 0
            && self.births[i] != UNUSED
            && now.saturating_sub(u64::from(self.births[i] - 1) * BIRTH_UNIT_NS) >= self.max_age_ns;
        let rotated = (used_up || too_old) && self.rotate(slot);
        if self.max_uses > 0 {
            self.uses[i] = self.uses[i].saturating_add(1);
        }
        if self.max_age_ns > 0 && self.births[i] == UNUSED {
            let unit = (now / BIRTH_UNIT_NS).min(u64::from(u32::MAX - 1));
            self.births[i] = unit as u32 + 1;
        }
        (self.number(slot), rotated)
    }

    /// Gives `slot` its next id, unused and unborn. False (and no change) only when the slot
    /// has used up its generations.
    pub fn rotate(&mut self, slot: u32) -> bool {
        let i = slot as usize;
        let Some(next) = self.generations[i].checked_add(1) else {
            return false;
        };
        self.generations[i] = next;
        if let Some(uses) = self.uses.get_mut(i) {
            *uses = 0;
        }
        if let Some(birth) = self.births.get_mut(i) {
            *birth = UNUSED;
        }
        true
    }

    /// The slots past their first id: `(slot, generation)`, for a snapshot. O(pool size).
    pub fn rotated(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0..self.pool_size).filter_map(|slot| {
            let generation = self.generations[slot as usize];
            (generation > 0).then_some((slot, generation))
        })
    }

    /// The epoch generations >= 1 are numbered from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Restores a crawl's numbering (from a snapshot): its epoch, and each rotated slot's
    /// generation, whose id goes on unused and unborn. Before the first hand-out.
    pub fn restore(&mut self, epoch: u64, rotated: &[(u32, u32)]) {
        self.epoch = epoch;
        for &(slot, generation) in rotated {
            self.generations[slot as usize] = generation;
        }
    }

    /// Bytes held per slot (the capacity of every array it keeps).
    pub fn bytes(&self) -> usize {
        4 * (self.generations.capacity() + self.uses.capacity() + self.births.capacity())
    }
}

/// How session numbers map to (slot, generation): see the module doc. Plain arithmetic, so the
/// engine reads numbers without taking its lock.
#[derive(Debug, Clone, Copy)]
pub struct Numbering {
    pool_size: u64,
    epoch: u64,
}

impl Numbering {
    pub fn new(pool_size: u32, epoch: u64) -> Self {
        Self {
            pool_size: pool_size.into(),
            epoch,
        }
    }

    pub fn number(&self, slot: u32, generation: u32) -> u64 {
        let rank = match generation {
            0 => 0,
            g => self.epoch + u64::from(g),
        };
        u64::from(slot) + rank * self.pool_size
    }

    /// `(slot, generation)` of a number this crawl can hand out; `None` for any other.
    pub fn locate(&self, number: u64) -> Option<(u32, u32)> {
        let slot = (number % self.pool_size) as u32;
        match number / self.pool_size {
            0 => Some((slot, 0)),
            rank if rank > self.epoch => Some((slot, u32::try_from(rank - self.epoch).ok()?)),
            _ => None,
        }
    }
}

/// Which of `count` User-Agents the session with this number presents: a fixed hash of the
/// number, so one id always presents the same one (in every crawl), and a slot may present
/// another after rotation. `count` must not be 0.
pub fn user_agent_index(number: u64, count: usize) -> usize {
    // splitmix64's finaliser: consecutive numbers spread evenly over the list.
    let mut z = number.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % count as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn numbers_map_back_to_slot_and_generation_under_any_epoch() {
        for epoch in [0, 1, 12_345, (1 << 31) - 1] {
            let numbering = Numbering::new(7, epoch);
            for slot in [0, 3, 6] {
                assert_eq!(numbering.number(slot, 0), u64::from(slot));
                for generation in [0, 1, 2, 1000, u32::MAX] {
                    let number = numbering.number(slot, generation);
                    assert_eq!(numbering.locate(number), Some((slot, generation)));
                }
            }
            // Between the pool and the epoch's first generation: numbers of no session.
            if epoch > 0 {
                assert_eq!(numbering.locate(7 * epoch + 3), None);
            }
        }
    }

    const SEC: u64 = 1_000_000_000;

    fn identities(size: u32, max_uses: u32, max_age_secs: u64) -> Identities {
        Identities::new(
            size,
            OnBlacklist::Rotate,
            max_uses,
            Duration::from_secs(max_age_secs),
        )
        .unwrap()
    }

    #[test]
    fn nothing_is_kept_when_nothing_rotates() {
        assert!(Identities::new(1000, OnBlacklist::Cooldown, 0, Duration::ZERO).is_none());
    }

    #[test]
    fn each_switch_costs_four_bytes_a_slot() {
        let size = 1000;
        let bytes = |on_blacklist, max_uses, max_age_secs| {
            Identities::new(
                size,
                on_blacklist,
                max_uses,
                Duration::from_secs(max_age_secs),
            )
            .unwrap()
            .bytes()
                / size as usize
        };
        assert_eq!(bytes(OnBlacklist::Rotate, 0, 0), 4);
        assert_eq!(bytes(OnBlacklist::Cooldown, 10, 0), 8);
        assert_eq!(bytes(OnBlacklist::Cooldown, 0, 60), 8);
        assert_eq!(bytes(OnBlacklist::Rotate, 10, 60), 12);
    }

    #[test]
    fn generation_zero_numbers_are_the_indices_and_rotation_adds_the_pool_size() {
        let mut ids = identities(4, 0, 0);
        assert_eq!(
            (0..4).map(|s| ids.number(s)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(ids.rotate(2));
        assert_eq!(ids.number(2), 6);
        assert!(ids.rotate(2));
        assert_eq!((ids.number(2), ids.generation(2)), (10, 2));
        assert_eq!(ids.number(1), 1);
    }

    #[test]
    fn rotated_numbers_never_repeat_across_slots() {
        let mut ids = identities(7, 0, 0);
        let mut seen: HashSet<u64> = (0..7).map(|s| ids.number(s)).collect();
        for step in 0..10_000u32 {
            let slot = (step * 5 + step / 3) % 7;
            assert!(ids.rotate(slot));
            assert!(
                seen.insert(ids.number(slot)),
                "number {} twice",
                ids.number(slot)
            );
        }
    }

    #[test]
    fn max_uses_rotates_before_the_next_hand_out() {
        let mut ids = identities(2, 3, 0);
        let handed: Vec<(u64, bool)> = (0..7).map(|_| ids.hand_out(1, 0)).collect();
        assert_eq!(
            handed,
            [
                (1, false),
                (1, false),
                (1, false),
                (3, true),
                (3, false),
                (3, false),
                (5, true)
            ]
        );
    }

    #[test]
    fn max_age_counts_from_the_first_hand_out() {
        let mut ids = identities(1, 0, 60);
        // Created at 0, first handed out at 100 s: its age starts then.
        assert_eq!(ids.hand_out(0, 100 * SEC), (0, false));
        assert_eq!(ids.hand_out(0, 160 * SEC - 1), (0, false));
        assert_eq!(ids.hand_out(0, 160 * SEC), (1, true));
        assert_eq!(ids.hand_out(0, 219 * SEC), (1, false));
        assert_eq!(ids.hand_out(0, 220 * SEC), (2, true));
    }

    #[test]
    fn an_id_rotated_on_blacklist_starts_its_uses_and_age_afresh() {
        let mut ids = identities(1, 2, 60);
        assert_eq!(ids.hand_out(0, 0), (0, false));
        assert!(ids.rotate(0));
        // Born at its first hand-out (50 s), not at the rotation; two uses left.
        assert_eq!(ids.hand_out(0, 50 * SEC), (1, false));
        assert_eq!(ids.hand_out(0, 109 * SEC), (1, false));
        assert_eq!(ids.hand_out(0, 109 * SEC), (2, true));
    }

    #[test]
    fn a_slot_that_used_up_its_generations_keeps_its_last_id() {
        let mut ids = identities(3, 1, 0);
        ids.generations[1] = u32::MAX;
        let last = ids.number(1);
        assert_eq!(last, 1 + u64::from(u32::MAX) * 3);
        assert!(!ids.rotate(1));
        assert_eq!(ids.hand_out(1, 0), (last, false));
        assert_eq!(ids.hand_out(1, 0), (last, false));
    }

    #[test]
    fn user_agents_are_stable_per_number_and_spread_over_the_list() {
        assert_eq!(user_agent_index(6, 3), user_agent_index(6, 3));
        let mut counts = [0_u32; 3];
        for number in 0..30_000 {
            counts[user_agent_index(number, 3)] += 1;
        }
        assert!(
            counts.iter().all(|&c| c.abs_diff(10_000) < 500),
            "{counts:?}"
        );
        assert_eq!(user_agent_index(u64::MAX, 1), 0);
    }
}
