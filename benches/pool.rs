//! Pool throughput at every pool size and cooling share: `cargo bench --bench pool`.
//! The per-operation times should not grow with either.

#![allow(clippy::print_stdout, reason = "a bench prints its table")]

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use scrapy_hexproxy::pool::Pool;

const OPS: u32 = 1_000_000;
const COOLDOWN: Duration = Duration::from_secs(300);

/// Nanoseconds per call of `op`, over `OPS` calls.
fn per_op(mut op: impl FnMut(u32)) -> f64 {
    let start = Instant::now();
    for i in 0..OPS {
        op(i);
    }
    start.elapsed().as_nanos() as f64 / f64::from(OPS)
}

fn main() {
    println!(
        "{:>10} {:>8} {:>10} {:>9} {:>13} {:>14}",
        "sessions", "cooling", "build ms", "pick ns", "pick excl ns", "fail+back ns"
    );
    for size in [20, 1_000, 1_000_000, 10_000_000] {
        for cooling_percent in [0, 50, 99] {
            let start = Instant::now();
            let mut pool = Pool::new(size, 1, COOLDOWN);
            let build_ms = start.elapsed().as_secs_f64() * 1e3;
            let cooling = (u64::from(size) * cooling_percent / 100) as u32;
            for index in 0..cooling {
                pool.failure(index, 0);
            }
            let mut rng = SmallRng::seed_from_u64(1);
            let pick = per_op(|_| {
                black_box(pool.pick(0, &[], &mut rng));
            });
            let exclude = [size - 1, size - 2, size - 3, size - 4];
            let pick_excluded = per_op(|_| {
                black_box(pool.pick(0, black_box(&exclude), &mut rng));
            });
            // Steady churn: each step blacklists a live session and one cooldown ends.
            let step = COOLDOWN.as_nanos() as u64;
            let churn = per_op(|i| {
                let now = step * u64::from(i + 1);
                if let Some(index) = pool.pick(now, &[], &mut rng) {
                    black_box(pool.failure(index, now));
                }
            });
            println!(
                "{size:>10} {cooling_percent:>7}% {build_ms:>10.2} {pick:>9.1} {pick_excluded:>13.1} {churn:>14.1}"
            );
        }
    }
}
