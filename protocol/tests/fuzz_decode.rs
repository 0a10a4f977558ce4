//! Random and mutated frames never panic the decoder: they decode or give a typed error.

use bytes::Bytes;
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

    /// Truncations anywhere and mutations of the header and the first body bytes.
    ///
    /// Known gap (see the broker notes): kafka-protocol 0.18 preallocates arrays from the wire
    /// length (`Vec::with_capacity(n)`), so a crafted array length deep in a body can make the
    /// allocator abort the process. Mutations are kept out of array length fields here until
    /// Runnel decodes with bounded preallocation.
    #[test]
    fn truncated_and_header_mutated_frames_never_panic(
        which in 0usize..6,
        flips in prop::collection::vec((0usize..10, any::<u8>()), 0..4),
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
