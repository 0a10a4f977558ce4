//! The four codecs Kafka record batches use, in the framings Kafka's own clients write.
//!
//! The log stores compressed batches as received; only the cleaner (which must drop records
//! from inside a batch) and timestamp lookups (which need record timestamps) open them.
//! Every decompression is bounded so a small hostile batch cannot expand without limit.

use std::io::{Read, Write};

use bytes::Bytes;

use crate::error::{Result, StorageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn from_id(id: i16) -> Result<Compression> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => {
                return Err(StorageError::InvalidBatch(format!(
                    "unknown compression codec {other}"
                )))
            }
        })
    }

    pub fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

/// Java's snappy-java stream framing, which Kafka's Java producer writes and every client reads.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;
const XERIAL_BLOCK: usize = 32 * 1024;

fn codec_error(codec: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::InvalidRecords(format!("{codec}: {e}"))
}

fn too_large(max: usize) -> StorageError {
    StorageError::InvalidRecords(format!("records decompress to more than {max} bytes"))
}

fn read_bounded(codec: &str, reader: impl Read, max: usize) -> Result<Bytes> {
    let mut out = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| codec_error(codec, e))?;
    if out.len() > max {
        return Err(too_large(max));
    }
    Ok(Bytes::from(out))
}

/// Decompresses a batch's records section, refusing output larger than `max` bytes.
pub fn decompress(codec: Compression, input: &[u8], max: usize) -> Result<Bytes> {
    match codec {
        Compression::None => Ok(Bytes::copy_from_slice(input)),
        Compression::Gzip => read_bounded("gzip", flate2::read::GzDecoder::new(input), max),
        Compression::Lz4 => {
            let decoder = lz4::Decoder::new(input).map_err(|e| codec_error("lz4", e))?;
            read_bounded("lz4", decoder, max)
        }
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(input).map_err(|e| codec_error("zstd", e))?;
            read_bounded("zstd", decoder, max)
        }
        Compression::Snappy => decompress_snappy(input, max),
    }
}

fn snappy_raw(block: &[u8], out: &mut Vec<u8>, max: usize) -> Result<()> {
    let len = snap::raw::decompress_len(block).map_err(|e| codec_error("snappy", e))?;
    if out.len() + len > max {
        return Err(too_large(max));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| codec_error("snappy", e))?;
    Ok(())
}

fn decompress_snappy(input: &[u8], max: usize) -> Result<Bytes> {
    let mut out = Vec::new();
    if input.len() >= XERIAL_HEADER_LEN && input[..8] == XERIAL_MAGIC {
        let mut pos = XERIAL_HEADER_LEN;
        while pos < input.len() {
            let len_bytes: [u8; 4] = input
                .get(pos..pos + 4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| codec_error("snappy", "truncated block length"))?;
            let len = u32::from_be_bytes(len_bytes) as usize;
            pos += 4;
            let block = input
                .get(pos..pos.saturating_add(len))
                .ok_or_else(|| codec_error("snappy", "truncated block"))?;
            snappy_raw(block, &mut out, max)?;
            pos += len;
        }
    } else {
        snappy_raw(input, &mut out, max)?;
    }
    Ok(Bytes::from(out))
}

/// Compresses a records section in the framing Kafka's Java producer writes.
pub fn compress(codec: Compression, input: &[u8]) -> Result<Bytes> {
    match codec {
        Compression::None => Ok(Bytes::copy_from_slice(input)),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder
                .write_all(input)
                .map_err(|e| codec_error("gzip", e))?;
            Ok(Bytes::from(
                encoder.finish().map_err(|e| codec_error("gzip", e))?,
            ))
        }
        Compression::Lz4 => {
            // Kafka's KafkaLZ4BlockInputStream reads only independent blocks.
            let mut encoder = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .build(Vec::new())
                .map_err(|e| codec_error("lz4", e))?;
            encoder
                .write_all(input)
                .map_err(|e| codec_error("lz4", e))?;
            let (out, result) = encoder.finish();
            result.map_err(|e| codec_error("lz4", e))?;
            Ok(Bytes::from(out))
        }
        Compression::Zstd => zstd::bulk::compress(input, 3)
            .map(Bytes::from)
            .map_err(|e| codec_error("zstd", e)),
        Compression::Snappy => {
            let mut out = Vec::with_capacity(input.len() / 2 + XERIAL_HEADER_LEN);
            out.extend_from_slice(&XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for chunk in input.chunks(XERIAL_BLOCK) {
                let block = encoder
                    .compress_vec(chunk)
                    .map_err(|e| codec_error("snappy", e))?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(Bytes::from(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn every_codec_round_trips_large_input() {
        let input: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in ALL {
            let packed = compress(codec, &input).expect("compress");
            let unpacked = decompress(codec, &packed, input.len()).expect("decompress");
            assert_eq!(&unpacked[..], &input[..], "{codec:?}");
        }
    }

    #[test]
    fn decompression_is_bounded() {
        let input = vec![0u8; 1 << 20];
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = compress(codec, &input).expect("compress");
            let err = decompress(codec, &packed, 1000).expect_err("bomb must be refused");
            assert!(
                matches!(err, StorageError::InvalidRecords(_)),
                "{codec:?}: {err}"
            );
        }
    }

    #[test]
    fn raw_snappy_is_read_too() {
        let raw = snap::raw::Encoder::new()
            .compress_vec(b"hello hello hello")
            .expect("snappy");
        assert_eq!(
            &decompress(Compression::Snappy, &raw, 100).expect("raw")[..],
            b"hello hello hello"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(
                decompress(codec, &[1, 2, 3, 4, 5, 6, 7, 8, 9], 100).is_err(),
                "{codec:?}"
            );
        }
    }
}
