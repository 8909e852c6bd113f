//! Rejected credentials: consecutive 407s. A gateway's credentials are shared by every session,
//! so its 407s are counted across sessions. Each proxy of a list has credentials of its own, so a
//! 407 says only that this proxy's are wrong: they are counted per proxy, and the crawl stops
//! only once every proxy of the list stands rejected.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Flags of `rejected` (the engine's flags have the same values).
pub const ALL_REJECTED: u32 = 2;
pub const PROXY_REJECTED: u32 = 8;

#[derive(Debug)]
pub struct AuthTracker {
    to_close: u32,
    /// The gateway's consecutive 407s, whatever the session.
    in_a_row: AtomicU32,
    /// With a proxy list: the consecutive 407s of each proxy (allocated only for a list).
    per_proxy: Option<PerProxy>,
    failed: AtomicBool,
}

#[derive(Debug)]
struct PerProxy {
    in_a_row: Box<[AtomicU32]>,
    /// How many proxies have `to_close` or more 407s in a row, kept up to date on each
    /// crossing so that "all rejected" is one comparison, not a walk over the list.
    rejected: AtomicU32,
}

impl AuthTracker {
    pub fn gateway(to_close: u32) -> Self {
        Self {
            to_close,
            in_a_row: AtomicU32::new(0),
            per_proxy: None,
            failed: AtomicBool::new(false),
        }
    }

    pub fn per_proxy(to_close: u32, proxies: u32) -> Self {
        Self {
            per_proxy: Some(PerProxy {
                in_a_row: (0..proxies).map(|_| AtomicU32::new(0)).collect(),
                rejected: AtomicU32::new(0),
            }),
            ..Self::gateway(to_close)
        }
    }

    /// A 407 on session `index`. `PROXY_REJECTED` when this one brought a listed proxy to
    /// `to_close` in a row; `ALL_REJECTED` (once) when the crawl must stop.
    pub fn rejected(&self, index: u32) -> u32 {
        let Some(per_proxy) = &self.per_proxy else {
            let in_a_row = self.in_a_row.fetch_add(1, Ordering::AcqRel) + 1;
            return if in_a_row >= self.to_close {
                self.fail()
            } else {
                0
            };
        };
        let in_a_row = per_proxy.in_a_row[index as usize].fetch_add(1, Ordering::AcqRel) + 1;
        if in_a_row != self.to_close {
            return 0;
        }
        let rejected = per_proxy.rejected.fetch_add(1, Ordering::AcqRel) + 1;
        if rejected as usize == per_proxy.in_a_row.len() {
            PROXY_REJECTED | self.fail()
        } else {
            PROXY_REJECTED
        }
    }

    /// A success on session `index`: its credentials work.
    pub fn accepted(&self, index: u32) {
        match &self.per_proxy {
            None => self.in_a_row.store(0, Ordering::Release),
            Some(per_proxy) => {
                let before = per_proxy.in_a_row[index as usize].swap(0, Ordering::AcqRel);
                if before >= self.to_close {
                    per_proxy.rejected.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Whether the crawl stopped for rejected credentials.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Another process sharing the pool found the credentials rejected: they are for this one
    /// too. `ALL_REJECTED` the first time.
    pub fn rejected_elsewhere(&self) -> u32 {
        self.fail()
    }

    fn fail(&self) -> u32 {
        if self.failed.swap(true, Ordering::AcqRel) {
            0
        } else {
            ALL_REJECTED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateways_407s_count_across_sessions_until_a_success() {
        let auth = AuthTracker::gateway(3);
        assert_eq!(auth.rejected(0), 0);
        assert_eq!(auth.rejected(5), 0);
        auth.accepted(9);
        assert_eq!(auth.rejected(0), 0);
        assert_eq!(auth.rejected(1), 0);
        assert!(!auth.failed());
        assert_eq!(auth.rejected(2), ALL_REJECTED);
        assert!(auth.failed());
        assert_eq!(auth.rejected(2), 0);
    }

    #[test]
    fn a_listed_proxy_is_rejected_alone_and_the_crawl_stops_when_all_are() {
        let auth = AuthTracker::per_proxy(2, 3);
        assert_eq!(auth.rejected(0), 0);
        // Another proxy's success says nothing about proxy 0.
        auth.accepted(1);
        assert_eq!(auth.rejected(0), PROXY_REJECTED);
        assert_eq!(auth.rejected(0), 0);
        assert_eq!(auth.rejected(1), 0);
        assert_eq!(auth.rejected(1), PROXY_REJECTED);
        // Proxy 1 works after all: it is no longer rejected.
        auth.accepted(1);
        assert_eq!(auth.rejected(2), 0);
        assert_eq!(auth.rejected(2), PROXY_REJECTED);
        assert!(!auth.failed());
        assert_eq!(auth.rejected(1), 0);
        assert_eq!(auth.rejected(1), PROXY_REJECTED | ALL_REJECTED);
        assert!(auth.failed());
    }

    #[test]
    fn a_list_of_one_behaves_as_a_gateway() {
        let auth = AuthTracker::per_proxy(1, 1);
        assert_eq!(auth.rejected(0), PROXY_REJECTED | ALL_REJECTED);
        assert_eq!(auth.rejected(0), 0);
    }
}
