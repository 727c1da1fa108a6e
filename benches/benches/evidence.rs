//! What the signed per-step evidence (protocol 5, `lamina_protocol::evidence`) costs a hop
//! per step: signing its record, verifying one record from below, the blake3 digest of a
//! one-row activation, and a record's size on the wire (printed once).
//!
//! `cargo bench -p lamina-benches --bench evidence`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use lamina_protocol::evidence::{digest_tensor, StepProduct, StepRecord};
use lamina_protocol::{LayerRange, SessionId, WireDType, WireTensor};
use libp2p_identity::Keypair;

fn record(key: &Keypair, step: u64) -> StepRecord {
    StepRecord {
        signer: key.public().to_peer_id().to_bytes(),
        session_id: SessionId::from(1u128),
        step,
        layers: LayerRange::new(0, 2).expect("range"),
        input: [1; 32],
        output: StepProduct::Hidden([2; 32]),
    }
}

fn evidence(c: &mut Criterion) {
    let key = Keypair::generate_ed25519();
    let signed = record(&key, 0).sign(&key).expect("sign");
    let row = vec![0.5f32; 2048];
    let one_row = WireTensor::from_f32(&[1, 2048], &row, WireDType::F16).expect("tensor");
    eprintln!(
        "a signed step record: {} bytes of body, {} of key, {} of signature",
        signed.body.len(),
        signed.public_key.len(),
        signed.signature.len()
    );
    let mut g = c.benchmark_group("evidence");
    let mut step = 0u64;
    g.bench_function("sign", |b| {
        b.iter(|| {
            step += 1;
            black_box(record(&key, step).sign(&key).expect("sign"))
        })
    });
    g.bench_function("verify", |b| {
        b.iter(|| black_box(signed.verify().expect("verify")))
    });
    g.bench_function("digest_2048_f16_row", |b| {
        b.iter(|| black_box(digest_tensor(black_box(&one_row))))
    });
    g.finish();
}

criterion_group!(benches, evidence);
criterion_main!(benches);
