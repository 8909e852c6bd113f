//! Criterion benchmarks of the core, at every pool size and cooling share:
//! `cargo bench --bench core`. Per-operation times must not grow with either.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use scrapy_hexproxy::clock::Clock;
use scrapy_hexproxy::config::Settings;
use scrapy_hexproxy::engine::{Engine, Event};
use scrapy_hexproxy::pool::Pool;
use scrapy_hexproxy::retry::Cause;
use scrapy_hexproxy::scope::HostBans;

const SIZES: [u32; 4] = [20, 1_000, 100_000, 1_000_000];
const COOLDOWN: Duration = Duration::from_secs(300);

fn engine(pool_size: u32) -> Engine {
    let settings = Settings {
        pool_size: pool_size.into(),
        cooldown: COOLDOWN.as_secs_f64(),
        ..Settings::documented("USER", "PASS")
    };
    Engine::new(settings.validate().unwrap(), Clock::system(), Some(1))
}

/// A pool of `size` with `percent` of its sessions cooling.
fn pool(size: u32, percent: u64) -> Pool {
    let mut pool = Pool::new(size, 1, COOLDOWN);
    for index in 0..(u64::from(size) * percent / 100) as u32 {
        pool.failure(index, 0);
    }
    pool
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/pick");
    for size in SIZES {
        for percent in [0, 50, 99] {
            let mut pool = pool(size, percent);
            let mut rng = SmallRng::seed_from_u64(1);
            let id = BenchmarkId::new(format!("{percent}% cooling"), size);
            group.bench_function(id, |b| b.iter(|| pool.pick(0, &[], &mut rng)));
        }
        let mut pool = pool(size, 0);
        let mut rng = SmallRng::seed_from_u64(1);
        let exclude = [0, 1, 2, 3];
        let id = BenchmarkId::new("4 excluded", size);
        group.bench_function(id, |b| {
            b.iter(|| pool.pick(0, black_box(&exclude), &mut rng))
        });
    }
    group.finish();
}

/// Ban scope "domain": a pick for a host that `percent` of the pool cools for (scattered: all
/// but one slot in a hundred at 99%).
fn domain_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("scope/pick");
    for size in SIZES {
        for percent in [0, 99] {
            let mut bans = HostBans::new(size, 1, COOLDOWN);
            for slot in (0..size).filter(|slot| u64::from(slot % 100) < percent) {
                bans.failure(slot, "a.test", 0);
            }
            let mut rng = SmallRng::seed_from_u64(1);
            let id = BenchmarkId::new(format!("{percent}% cooling for the host"), size);
            group.bench_function(id, |b| b.iter(|| bans.pick("a.test", 0, &[], &mut rng)));
        }
    }
    group.finish();
}

/// Steady churn: each step blacklists a live session and one cooldown ends (the expiry).
fn blacklist_and_expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/blacklist+expire");
    for size in SIZES {
        let mut pool = pool(size, 50);
        let mut rng = SmallRng::seed_from_u64(1);
        let step = COOLDOWN.as_nanos() as u64 / u64::from(size / 2).max(1);
        let mut now = COOLDOWN.as_nanos() as u64;
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                now += step;
                if let Some(index) = pool.pick(now, &[], &mut rng) {
                    black_box(pool.failure(index, now));
                }
            })
        });
    }
    group.finish();
}

/// What a request costs the engine: pick, its id and header, a 200, the retry check.
fn engine_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/request");
    for size in SIZES {
        let engine = engine(size);
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                let index = engine.pick(None, &[]).unwrap();
                let id = engine.session(index).unwrap();
                let header = engine.proxy_authorization(index).unwrap();
                let flags = engine.record(index, None, Event::Status(200)).unwrap();
                black_box((id.as_str().len(), header, flags, engine.may_retry(200)))
            })
        });
    }
    group.finish();
    let engine = engine(20);
    c.bench_function("engine/decide_retry", |b| {
        b.iter(|| engine.decide_retry(Cause::Status(black_box(503)), 1, None))
    });
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/build");
    group.sample_size(10);
    for size in SIZES {
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| Pool::new(black_box(size), 5, COOLDOWN))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    pick,
    domain_pick,
    blacklist_and_expire,
    engine_request,
    build
);
criterion_main!(benches);
