//! The retry decision for one failed attempt.

use crate::config::StatusSet;

/// What went wrong with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Status(u16),
    /// A transport exception (connection, tunnel, timeout): always retryable.
    Exception,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Decision {
    /// Not a retry case: hand the response on as it is.
    Pass = 0,
    Retry = 1,
    /// Retryable but out of retries.
    GiveUp = 2,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    retry_codes: StatusSet,
    max_retries: u32,
}

impl RetryPolicy {
    pub fn new(retry_codes: StatusSet, max_retries: u32) -> Self {
        Self {
            retry_codes,
            max_retries,
        }
    }

    /// False when `decide` would pass a response with this status whatever the request.
    pub fn may_retry(&self, status: u16) -> bool {
        self.retry_codes.contains(status)
    }

    /// `retry_times_done` is the request's `retry_times` meta (0 on the first attempt);
    /// `max_retry_times` its `max_retry_times` meta, which overrides the configured maximum.
    pub fn decide(
        &self,
        cause: Cause,
        retry_times_done: u32,
        max_retry_times: Option<u32>,
        auth_failed: bool,
    ) -> Decision {
        let retryable = match cause {
            // Once the crawl is stopping for bad credentials, retrying a 407 only hammers the
            // gateway with the same wrong password.
            Cause::Status(407) if auth_failed => false,
            Cause::Status(status) => self.retry_codes.contains(status),
            Cause::Exception => true,
        };
        if !retryable {
            Decision::Pass
        } else if retry_times_done < max_retry_times.unwrap_or(self.max_retries) {
            Decision::Retry
        } else {
            Decision::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        let codes = StatusSet::from_codes("X", &[403, 407, 429, 503]).unwrap();
        RetryPolicy::new(codes, 2)
    }

    #[test]
    fn statuses_outside_retry_codes_pass() {
        assert_eq!(
            policy().decide(Cause::Status(200), 0, None, false),
            Decision::Pass
        );
        assert_eq!(
            policy().decide(Cause::Status(500), 0, None, false),
            Decision::Pass
        );
    }

    #[test]
    fn retry_codes_and_exceptions_retry_up_to_max_retries() {
        for cause in [Cause::Status(429), Cause::Exception] {
            assert_eq!(policy().decide(cause, 0, None, false), Decision::Retry);
            assert_eq!(policy().decide(cause, 1, None, false), Decision::Retry);
            assert_eq!(policy().decide(cause, 2, None, false), Decision::GiveUp);
        }
    }

    #[test]
    fn max_retry_times_meta_overrides_the_setting() {
        let cause = Cause::Status(503);
        assert_eq!(policy().decide(cause, 3, Some(5), false), Decision::Retry);
        assert_eq!(policy().decide(cause, 0, Some(0), false), Decision::GiveUp);
    }

    #[test]
    fn a_407_is_not_retried_once_auth_failed() {
        assert_eq!(
            policy().decide(Cause::Status(407), 0, None, false),
            Decision::Retry
        );
        assert_eq!(
            policy().decide(Cause::Status(407), 0, None, true),
            Decision::Pass
        );
        assert_eq!(
            policy().decide(Cause::Status(403), 0, None, true),
            Decision::Retry
        );
    }
}
