//! Random and mutated frames never panic the decoder: they decode or give a typed error.

use bytes::Bytes;

/// As in the `runnel` binary: huge wire-length preallocations do not abort the process.
#[global_allocator]
static ALLOCATOR: runnel_protocol::alloc::LazyHugeAllocator =
    runnel_protocol::alloc::LazyHugeAllocator;
use proptest::prelude::*;
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, FetchRequest, MetadataRequest, ProduceRequest, RequestKind,
};
use runnel_protocol::{decode_request, encode_request};

fn valid_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (key, version, body) in [
        (
            ApiKey::Metadata,
            12,
            RequestKind::Metadata(MetadataRequest::default()),
        ),
        (
            ApiKey::Metadata,
            1,
            RequestKind::Metadata(MetadataRequest::default()),
        ),
        (
            ApiKey::Produce,
            9,
            RequestKind::Produce(ProduceRequest::default().with_acks(-1)),
        ),
        (
            ApiKey::Produce,
            3,
            RequestKind::Produce(ProduceRequest::default().with_acks(1)),
        ),
        (
            ApiKey::Fetch,
            12,
            RequestKind::Fetch(FetchRequest::default()),
        ),
        (
            ApiKey::Fetch,
            4,
            RequestKind::Fetch(FetchRequest::default()),
        ),
    ] {
        let framed = encode_request(key, version, 1, "fuzz", &body).expect("encode");
        out.push(framed[4..].to_vec());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_request(Bytes::from(bytes));
    }

    /// Truncations and byte mutations anywhere, array length fields included: kafka-protocol
    /// preallocates arrays from wire lengths, which `LazyHugeAllocator` makes survivable.
    #[test]
    fn truncated_and_mutated_frames_never_panic(
        which in 0usize..6,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let mut frame = valid_frames()[which].clone();
        for (at, byte) in flips {
            let i = at % frame.len();
            frame[i] = byte;
        }
        let keep = cut % (frame.len() + 1);
        frame.truncate(keep);
        let _ = decode_request(Bytes::from(frame));
    }
}

/// A Metadata request whose topic array claims two billion entries: without the allocator
/// guard the process aborts trying to preallocate ~100 GB.
#[test]
fn a_two_billion_element_array_is_an_error_not_an_abort() {
    let header = encode_request(
        ApiKey::Metadata,
        4,
        9,
        "x",
        &RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![]))),
    )
    .expect("encode");
    let mut frame = header[4..].to_vec();
    // The body starts with the topics array length (empty: 0); claim i32::MAX entries.
    let len_at = frame.len() - 5; // topics length (4) + allow_auto_topic_creation (1)
    frame[len_at..len_at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(decode_request(Bytes::from(frame)).is_err());
}
