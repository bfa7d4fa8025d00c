//! In-process cost of taking one webhook, against a bare `jsonwebtoken::decode` of the same
//! token with the same key. No HTTP, no key-store lookup, no inbox: this measures what the
//! crate adds around the one RS256 verify that any receiver has to do.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/criterion cargo bench --bench in_process -- --noplot
//! ```
//!
//! Three benchmarks, all on one `user.created` token signed with a fresh RSA-2048 key:
//! - `bare_decode`: `jsonwebtoken::decode::<serde_json::Value>` with
//!   `Validation::new(RS256)`, no required claims, no `exp`/`aud` checks: the floor;
//! - `verify_only`: `verify::parse` + `check_signature` + `into_event` (what
//!   `Verifier::verify` does, minus the key-store lookup);
//! - `full_path`: `verify_only`, then the route match (`Registry::handlers_for`) and
//!   `Dispatcher::dispatch` to one no-op handler, on a current-thread tokio runtime.
//!
//! A second group, `in_process_parts`, times the pieces of the difference without the RSA
//! verify they share (`rsa_verify`, `parse_and_claims`, `route_and_dispatch`), which is
//! steadier than subtracting two noisy figures on a shared machine.
//!
//! Last, `in_process_paired` times `full_path` and `bare_decode` in alternating batches and
//! prints the median of the per-round ratios: the overhead figure that holds up on a shared,
//! noisy machine (see `paired_ratio`).
//!
//! The overhead target (BENCHMARKS.md) is `full_path / bare_decode` under 1.10.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, criterion_group};
use jsonwebtoken::{Algorithm, Validation};
use kinde_webhooks::signing::SigningKey;
use kinde_webhooks::{Context, Dispatcher, Event, EventHandler, HandlerError, Registry, State};

/// A handler that does nothing, so `full_path` measures the dispatch machinery only.
struct Noop;

#[kinde_webhooks::async_trait]
impl EventHandler for Noop {
    async fn handle(&self, _: &Event, _: &Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// What every measurement shares: one signed `user.created` token, its key, the bare
/// decode's validation, and a dispatcher with one no-op handler on a current-thread runtime.
struct Fixture {
    decoding_key: jsonwebtoken::DecodingKey,
    token: String,
    validation: Validation,
    dispatcher: Dispatcher,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Self {
        let key = SigningKey::generate().expect("RSA key");
        let token = key.sign(&kinde_webhooks::samples::sample_claims("user.created"));
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let registry = Registry::builder()
            .handler("noop", &["user.created"], Noop)
            .build()
            .expect("registry");
        let fixture = Self {
            decoding_key: key.decoding_key(),
            token,
            validation,
            dispatcher: Dispatcher::new(registry, State::new(), Default::default()),
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("tokio runtime"),
        };
        // Every path must accept the token before its time means anything.
        fixture.bare_decode();
        assert!(fixture.route_and_dispatch(&fixture.verify_only()).all_ok());
        fixture
    }

    /// The floor: `jsonwebtoken::decode` with the same key.
    fn bare_decode(&self) -> jsonwebtoken::TokenData<serde_json::Value> {
        jsonwebtoken::decode(
            black_box(self.token.as_str()),
            &self.decoding_key,
            &self.validation,
        )
        .expect("bare decode")
    }

    /// What `Verifier::verify` does, minus the key-store lookup.
    fn verify_only(&self) -> Event {
        let t = kinde_webhooks::verify::parse(black_box(self.token.as_str())).expect("parse");
        t.check_signature(&self.decoding_key).expect("signature");
        t.into_event(Utc::now(), None).expect("event")
    }

    /// The route match and the dispatch to the no-op handler.
    fn route_and_dispatch(&self, event: &Event) -> kinde_webhooks::dispatch::Report {
        assert!(
            self.dispatcher
                .registry()
                .handlers_for(&event.event_type)
                .next()
                .is_some()
        );
        let report = self.rt.block_on(self.dispatcher.dispatch(event));
        assert!(report.all_ok());
        report
    }

    /// `verify_only`, then `route_and_dispatch`.
    fn full_path(&self) -> kinde_webhooks::dispatch::Report {
        self.route_and_dispatch(&self.verify_only())
    }
}

fn in_process(c: &mut Criterion) {
    let f = Fixture::new();
    let mut group = c.benchmark_group("in_process");
    group
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    group.bench_function("bare_decode", |b| b.iter(|| f.bare_decode()));
    group.bench_function("verify_only", |b| b.iter(|| f.verify_only()));
    group.bench_function("full_path", |b| b.iter(|| f.full_path()));
    group.finish();
}

/// The pieces of the difference `full_path - bare_decode`, each without the RSA verify that
/// both share. These are short and steady, so on a noisy machine they pin the overhead
/// down better than the difference of two noisy ~20 µs figures.
fn in_process_parts(c: &mut Criterion) {
    let f = Fixture::new();
    let token = f.token.as_str();
    let (message, signature) = token.rsplit_once('.').expect("three segments");
    let event = f.verify_only();

    let mut group = c.benchmark_group("in_process_parts");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);

    // The floor every path pays: one RS256 verify over the signing input, nothing else.
    group.bench_function("rsa_verify", |b| {
        b.iter(|| {
            let ok = jsonwebtoken::crypto::verify(
                black_box(signature),
                black_box(message.as_bytes()),
                &f.decoding_key,
                Algorithm::RS256,
            )
            .expect("verify");
            assert!(ok);
        })
    });

    // `verify_only` minus the signature: split, header, base64 and claims into an Event.
    group.bench_function("parse_and_claims", |b| {
        b.iter(|| {
            kinde_webhooks::verify::parse(black_box(token))
                .and_then(|t| t.into_event(Utc::now(), None))
                .expect("event")
        })
    });

    // `full_path` minus `verify_only`: the route match and dispatch to the no-op handler.
    group.bench_function("route_and_dispatch", |b| {
        b.iter(|| f.route_and_dispatch(black_box(&event)))
    });

    group.finish();
}

/// `full_path / bare_decode` measured pairwise: in each round, a batch of one and then a
/// batch of the other (the order alternates), so both see the same load and the ratio of
/// the round cancels what other processes do to the machine. Prints the median, quartiles
/// and spread of the per-round ratios. Criterion's own figures come from separate runs of
/// each benchmark, seconds apart, and on a shared machine their ratio moves with the load.
fn paired_ratio() {
    const ROUNDS: usize = 300;
    const BATCH: u32 = 100;

    let fx = Fixture::new();
    let bare = || {
        let start = Instant::now();
        for _ in 0..BATCH {
            black_box(fx.bare_decode());
        }
        start.elapsed()
    };
    let full = || {
        let start = Instant::now();
        for _ in 0..BATCH {
            black_box(fx.full_path());
        }
        start.elapsed()
    };

    // warm-up
    for _ in 0..10 {
        bare();
        full();
    }
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut bare_ns, mut full_ns) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for round in 0..ROUNDS {
        let (b, f) = if round % 2 == 0 {
            let b = bare();
            (b, full())
        } else {
            let f = full();
            (bare(), f)
        };
        bare_ns.push(b.as_nanos() as f64 / f64::from(BATCH));
        full_ns.push(f.as_nanos() as f64 / f64::from(BATCH));
        ratios.push(f.as_secs_f64() / b.as_secs_f64());
    }
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "in_process_paired/full_path_vs_bare_decode: {ROUNDS} rounds of {BATCH} + {BATCH} ops"
    );
    println!(
        "  per op, median of rounds: bare_decode {:.2} µs, full_path {:.2} µs (fastest rounds: {:.2} / {:.2} µs)",
        q(&mut bare_ns, 0.5) / 1e3,
        q(&mut full_ns, 0.5) / 1e3,
        q(&mut bare_ns, 0.0) / 1e3,
        q(&mut full_ns, 0.0) / 1e3,
    );
    println!(
        "  full_path / bare_decode per round: median {:.3}, quartiles {:.3} to {:.3}, 10th to 90th percentile {:.3} to {:.3}",
        q(&mut ratios, 0.5),
        q(&mut ratios, 0.25),
        q(&mut ratios, 0.75),
        q(&mut ratios, 0.1),
        q(&mut ratios, 0.9),
    );
}

criterion_group!(benches, in_process, in_process_parts);

fn main() {
    benches();
    // Only when benchmarking (`cargo bench` passes --bench; `cargo test --benches` does
    // not), and unless a name filter leaves the paired measurement out.
    let args: Vec<String> = std::env::args().skip(1).collect();
    // criterion's options that take a value; their values are not name filters
    const VALUED: &[&str] = &[
        "--color",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--format",
        "--output-format",
        "--plotting-backend",
    ];
    let filters: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !a.starts_with('-') && (*i == 0 || !VALUED.contains(&args[i - 1].as_str()))
        })
        .map(|(_, a)| a)
        .collect();
    let name = "in_process_paired/full_path_vs_bare_decode";
    if args.iter().any(|a| a == "--bench")
        && (filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
    {
        paired_ratio();
    }
    Criterion::default().configure_from_args().final_summary();
}
