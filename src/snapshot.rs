//! The pool's state across a pause (JOBDIR): what `Engine::snapshot` writes and
//! `Engine::restore` reads back.
//!
//! Only sessions with state are written, so the size follows the sessions benched or failing,
//! not the pool: a 10,000,000-session pool with 3 benched writes about 150 bytes. The format
//! (version 1, integers little-endian):
//!
//! ```text
//! "HXPOOL" 0x01
//! u32 length, then the configuration (UTF-8 `key=value` lines: no password, see `describe`)
//! u64 wall-clock time of the save, ns since the Unix epoch
//! u64 the numbering's epoch (identity.rs)
//! u32 n, then n × (u32 slot, u64 ns of cooldown left)       cooling, in the order they return
//! u32 n, then n × (u32 slot, u16 consecutive failures)      live sessions in a failure run
//! u32 n, then n × (u32 slot, u32 generation)                slots past their first id
//! u64 the host hash's key (ban scope "domain"; 0 in session scope)
//! u32 n, then n × (u64 host key, u32 m, then m × (u32 slot, u8 kind, u64 value))
//!                                 domain records per host, least recently touched first:
//!                                 kind 0 a failure run (value: failures), 1 a cooldown
//!                                 (value: ns left); host names are not kept, only their keys
//! u64 FNV-1a of every byte before it
//! ```
//!
//! Cooldowns are saved as the time left, with the wall-clock time of the save: at restore the
//! pause (by the wall clock) is taken off, so a session benched with 250 s left is out for
//! 250 s less the pause, whatever the monotonic clocks of the two processes say.

use std::fmt;
use std::time::Duration;

use crate::scope::{HostRecords, Record};

const MAGIC: &[u8; 6] = b"HXPOOL";
const VERSION: u8 = 1;

/// The state of a pool, as saved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolState {
    /// What the state belongs to (see `Engine::describe`); a state of another is ignored.
    pub config: String,
    pub saved_at_wall_ns: u64,
    pub epoch: u64,
    pub cooling: Vec<(u32, Duration)>,
    pub failing: Vec<(u32, u16)>,
    pub rotated: Vec<(u32, u32)>,
    /// Ban scope "domain": the key host names are hashed with, and each host's records.
    pub hash_key: u64,
    pub hosts: Vec<HostRecords>,
}

/// What a restore brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    /// Sessions still cooling after the pause.
    pub cooling: u32,
    /// Sessions whose cooldown ended during the pause: live again.
    pub expired: u32,
    /// Live sessions in a run of failures.
    pub failing: u32,
    /// Slots past their first id.
    pub rotated: u32,
    /// Ban scope "domain": (session, host) records still standing.
    pub records: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// Not a state this version can read: truncated, damaged or of another format.
    Unreadable(&'static str),
    /// A state of another configuration: the first thing that differs.
    OtherConfig { saved: String, current: String },
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable(why) => write!(f, "the saved pool state is unreadable ({why})"),
            Self::OtherConfig { saved, current } => write!(
                f,
                "the saved pool state is of another configuration (saved for {saved}, this \
                 crawl has {current})"
            ),
        }
    }
}

impl std::error::Error for RestoreError {}

/// 64-bit FNV-1a: a checksum, and a short fingerprint of a long proxy list.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The first `key=value` line where two configurations differ, as `(saved, current)`.
pub fn first_difference(saved: &str, current: &str) -> Option<(String, String)> {
    if saved == current {
        return None;
    }
    let mut saved_lines = saved.lines();
    let mut current_lines = current.lines();
    loop {
        match (saved_lines.next(), current_lines.next()) {
            (None, None) => return Some((saved.to_owned(), current.to_owned())),
            (a, b) if a == b => continue,
            (a, b) => {
                return Some((
                    a.unwrap_or("(nothing)").to_owned(),
                    b.unwrap_or("(nothing)").to_owned(),
                ))
            }
        }
    }
}

impl PoolState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self.config.len()
                + 12 * self.cooling.len()
                + 6 * self.failing.len()
                + 8 * self.rotated.len(),
        );
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.config.len() as u32).to_le_bytes());
        out.extend_from_slice(self.config.as_bytes());
        out.extend_from_slice(&self.saved_at_wall_ns.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&(self.cooling.len() as u32).to_le_bytes());
        for &(slot, left) in &self.cooling {
            out.extend_from_slice(&slot.to_le_bytes());
            let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
            out.extend_from_slice(&left.to_le_bytes());
        }
        out.extend_from_slice(&(self.failing.len() as u32).to_le_bytes());
        for &(slot, failures) in &self.failing {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&failures.to_le_bytes());
        }
        out.extend_from_slice(&(self.rotated.len() as u32).to_le_bytes());
        for &(slot, generation) in &self.rotated {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&generation.to_le_bytes());
        }
        out.extend_from_slice(&self.hash_key.to_le_bytes());
        out.extend_from_slice(&(self.hosts.len() as u32).to_le_bytes());
        for (key, records) in &self.hosts {
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&(records.len() as u32).to_le_bytes());
            for &(slot, record) in records {
                out.extend_from_slice(&slot.to_le_bytes());
                let (kind, value) = match record {
                    Record::Failing(fails) => (0_u8, u64::from(fails)),
                    Record::Cooling(left) => {
                        (1, u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
                    }
                };
                out.push(kind);
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        let checksum = fnv1a(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Reads a state back; every slot must be below `pool_size`. Never panics and never
    /// allocates more than the input's size warrants.
    pub fn decode(data: &[u8], pool_size: u32) -> Result<Self, RestoreError> {
        let body_len = data
            .len()
            .checked_sub(8)
            .ok_or(RestoreError::Unreadable("too short"))?;
        let mut reader = Reader {
            data: &data[..body_len],
        };
        if reader.take(MAGIC.len())? != MAGIC {
            return Err(RestoreError::Unreadable("not a pool state"));
        }
        if reader.take(1)? != [VERSION] {
            return Err(RestoreError::Unreadable("another version"));
        }
        let checksum = u64::from_le_bytes(data[body_len..].try_into().expect("8 bytes"));
        if fnv1a(&data[..body_len]) != checksum {
            return Err(RestoreError::Unreadable(
                "bad checksum: truncated or damaged",
            ));
        }
        let config_len = reader.u32()? as usize;
        let config = std::str::from_utf8(reader.take(config_len)?)
            .map_err(|_| RestoreError::Unreadable("configuration not UTF-8"))?
            .to_owned();
        let saved_at_wall_ns = reader.u64()?;
        let epoch = reader.u64()?;
        let mut seen = SlotSet::default();
        let cooling = reader.list(12, |r| {
            Ok((
                seen.slot(r.u32()?, pool_size)?,
                Duration::from_nanos(r.u64()?),
            ))
        })?;
        let mut seen = SlotSet::default();
        let failing = reader.list(6, |r| Ok((seen.slot(r.u32()?, pool_size)?, r.u16()?)))?;
        let mut seen = SlotSet::default();
        let rotated = reader.list(8, |r| Ok((seen.slot(r.u32()?, pool_size)?, r.u32()?)))?;
        let hash_key = reader.u64()?;
        let hosts = reader.list(12, |r| {
            let key = r.u64()?;
            let mut seen = SlotSet::default();
            let records = r.list(13, |r| {
                let slot = seen.slot(r.u32()?, pool_size)?;
                let kind = r.take(1)?[0];
                let value = r.u64()?;
                let record = match kind {
                    0 => Record::Failing(
                        u32::try_from(value)
                            .map_err(|_| RestoreError::Unreadable("a failure count too large"))?,
                    ),
                    1 => Record::Cooling(Duration::from_nanos(value)),
                    _ => return Err(RestoreError::Unreadable("a record of no kind")),
                };
                Ok((slot, record))
            })?;
            Ok((key, records))
        })?;
        if !reader.data.is_empty() {
            return Err(RestoreError::Unreadable("trailing bytes"));
        }
        Ok(Self {
            config,
            saved_at_wall_ns,
            epoch,
            cooling,
            failing,
            rotated,
            hash_key,
            hosts,
        })
    }
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RestoreError> {
        if self.data.len() < n {
            return Err(RestoreError::Unreadable("truncated"));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, RestoreError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, RestoreError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, RestoreError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// A count, then that many entries of `size` bytes each.
    fn list<T>(
        &mut self,
        size: usize,
        mut entry: impl FnMut(&mut Self) -> Result<T, RestoreError>,
    ) -> Result<Vec<T>, RestoreError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(size) > self.data.len() {
            return Err(RestoreError::Unreadable("truncated"));
        }
        (0..count).map(|_| entry(self)).collect()
    }
}

/// The slots of one list, each once.
#[derive(Default)]
struct SlotSet(std::collections::HashSet<u32>);

impl SlotSet {
    fn slot(&mut self, slot: u32, pool_size: u32) -> Result<u32, RestoreError> {
        if slot >= pool_size {
            return Err(RestoreError::Unreadable("a slot beyond the pool"));
        }
        if !self.0.insert(slot) {
            return Err(RestoreError::Unreadable("a slot twice"));
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PoolState {
        PoolState {
            config: "pool_size=4\nuser=u".into(),
            saved_at_wall_ns: 1_700_000_000_000_000_000,
            epoch: 77,
            cooling: vec![(2, Duration::from_secs(250)), (0, Duration::from_secs(251))],
            failing: vec![(1, 3)],
            rotated: vec![(3, 2)],
            hash_key: 99,
            hosts: vec![(
                5,
                vec![
                    (1, Record::Failing(2)),
                    (3, Record::Cooling(Duration::from_secs(9))),
                ],
            )],
        }
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let bytes = state().encode();
        assert_eq!(PoolState::decode(&bytes, 4), Ok(state()));
        assert_eq!(
            bytes.len(),
            7 + 4 + 18 + 16 + 4 + 24 + 4 + 6 + 4 + 8 + 8 + 4 + 12 + 26 + 8
        );
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = state().encode();
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    PoolState::decode(&bytes[..len], 4),
                    Err(RestoreError::Unreadable(_))
                ),
                "{len}"
            );
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(PoolState::decode(&damaged, 4).is_err(), "{at}");
        }
    }

    #[test]
    fn slots_beyond_the_pool_or_twice_are_refused() {
        assert_eq!(
            PoolState::decode(&state().encode(), 3),
            Err(RestoreError::Unreadable("a slot beyond the pool"))
        );
        let mut twice = state();
        twice.failing.push((1, 1));
        assert_eq!(
            PoolState::decode(&twice.encode(), 4),
            Err(RestoreError::Unreadable("a slot twice"))
        );
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating_it() {
        let mut bytes = state().encode();
        // The cooling count sits after magic, version, config and two u64s.
        let at = 7 + 4 + 18 + 16;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let body = bytes.len() - 8;
        let checksum = fnv1a(&bytes[..body]);
        bytes[body..].copy_from_slice(&checksum.to_le_bytes());
        assert_eq!(
            PoolState::decode(&bytes, 4),
            Err(RestoreError::Unreadable("truncated"))
        );
    }

    #[test]
    fn the_first_differing_line_is_named() {
        assert_eq!(first_difference("a=1\nb=2", "a=1\nb=2"), None);
        assert_eq!(
            first_difference("a=1\nb=2", "a=1\nb=3"),
            Some(("b=2".into(), "b=3".into()))
        );
    }
}
