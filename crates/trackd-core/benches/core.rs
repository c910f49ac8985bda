//! The per-request CPU cost of the domain: strict parse, validation, canonical form and
//! dedup key of a typical track body. `cargo bench -p trackd-core`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use trackd_core::{json, ProjectId, Timestamp, TrackRequest, MAX_JSON_DEPTH};

const BODY: &str = r#"{"identity":{"id":"4242","email":"u4242@example.com"},"event_name":"Viewed product","data":{"product_name":"Red T-shirt","product_url":"http://www.yourdomain.com/products/red-t-shirt","n":123456},"extras":{"source":"bench","created_at":"2023-05-30T04:46:31+0000"}}"#;

fn parse_and_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("track_body");
    group.throughput(Throughput::Bytes(BODY.len() as u64));
    group.bench_function("strict_parse", |b| {
        b.iter(|| json::parse_object(black_box(BODY.as_bytes()), "", MAX_JSON_DEPTH))
    });
    group.bench_function("parse_validate_dedup_key", |b| {
        b.iter(|| {
            let map =
                json::parse_object(black_box(BODY.as_bytes()), "", MAX_JSON_DEPTH).expect("valid");
            TrackRequest::new(map)
                .validate(ProjectId::new(1), Timestamp::from_micros(0))
                .expect("valid")
        })
    });
    group.bench_function("serde_json_value_for_comparison", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(BODY.as_bytes())))
    });
    group.finish();
}

criterion_group!(benches, parse_and_validate);
criterion_main!(benches);
