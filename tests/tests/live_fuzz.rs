//! Random and mutated frames thrown at a live broker (seeded; the seed is printed). The broker
//! may answer with error codes or close that one connection, but it never dies, and a
//! well-behaved client on another connection is unaffected throughout.
//! Mutations reach array length fields too: kafka-protocol preallocates arrays from wire
//! lengths, which the binary's allocator guard (`runnel_protocol::alloc`) makes survivable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runnel_protocol::frame::next_frame;
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, MetadataRequest, ProduceRequest, RequestKind,
    ResponseKind,
};
use runnel_protocol::{decode_response, encode_request};
use runnel_tests::Broker;

fn valid_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (key, version, body) in [
        (
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ),
        (
            ApiKey::Metadata,
            12,
            RequestKind::Metadata(MetadataRequest::default()),
        ),
        (
            ApiKey::Metadata,
            4,
            RequestKind::Metadata(MetadataRequest::default()),
        ),
        (
            ApiKey::Produce,
            9,
            RequestKind::Produce(ProduceRequest::default().with_acks(1)),
        ),
        (
            ApiKey::Fetch,
            12,
            RequestKind::Fetch(FetchRequest::default()),
        ),
    ] {
        out.push(
            encode_request(key, version, 7, "fuzz", &body)
                .expect("encode")
                .to_vec(),
        );
    }
    out
}

/// One ApiVersions round trip on a fresh connection.
fn healthy(bootstrap: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(bootstrap) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let frame = encode_request(
        ApiKey::ApiVersions,
        3,
        1,
        "probe",
        &RequestKind::ApiVersions(ApiVersionsRequest::default()),
    )
    .expect("encode");
    if s.write_all(&frame).is_err() {
        return false;
    }
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(frame)) = next_frame(&mut buf, 1 << 20) {
            return matches!(decode_response(ApiKey::ApiVersions, 3, frame), Ok((1, ResponseKind::ApiVersions(r))) if r.error_code == 0);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn random_and_mutated_frames_never_take_the_broker_down() {
    let broker = Broker::start(&[]).expect("broker");
    let bootstrap = broker.bootstrap();
    let seed = runnel_tests::seed("live_fuzz");
    let mut rng = StdRng::seed_from_u64(seed);
    let frames = valid_frames();
    // A steady client on its own connection must keep working.
    let mut steady = TcpStream::connect(&bootstrap).expect("connect");
    for round in 0..400 {
        let mut s = TcpStream::connect(&bootstrap).expect("connect");
        let _ = s.set_read_timeout(Some(Duration::from_millis(40)));
        let payload: Vec<u8> = match rng.random_range(0..3) {
            0 => {
                // Pure noise, with a plausible or absurd length prefix.
                let len = rng.random_range(0..64);
                let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let prefix = if rng.random_bool(0.5) {
                    len as i32
                } else {
                    rng.random()
                };
                let mut framed = prefix.to_be_bytes().to_vec();
                framed.append(&mut v);
                framed
            }
            1 => {
                // A valid request with bytes mutated anywhere after the length prefix.
                let mut f = frames[rng.random_range(0..frames.len())].clone();
                for _ in 0..rng.random_range(1..6) {
                    let at = rng.random_range(4..f.len());
                    f[at] = rng.random();
                }
                f
            }
            _ => {
                // A valid request cut short, then the connection closed.
                let f = &frames[rng.random_range(0..frames.len())];
                f[..rng.random_range(1..f.len())].to_vec()
            }
        };
        let _ = s.write_all(&payload);
        let mut sink = [0u8; 1024];
        let _ = s.read(&mut sink);
        drop(s);
        if round % 50 == 0 {
            assert!(
                healthy(&bootstrap),
                "broker stopped answering after round {round} (seed {seed})"
            );
            let frame = encode_request(
                ApiKey::Metadata,
                12,
                round,
                "steady",
                &RequestKind::Metadata(MetadataRequest::default()),
            )
            .expect("encode");
            steady
                .write_all(&frame)
                .expect("steady client's connection survives");
        }
    }
    assert!(
        healthy(&bootstrap),
        "broker answers after the fuzzing (seed {seed})"
    );
}
