//! Length-prefixed framing: every Kafka request and response is an `int32` size followed by
//! that many bytes.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The size prefix is negative.
    #[error("negative frame size {0}")]
    NegativeSize(i32),
    /// The size prefix exceeds the configured maximum (`socket.request.max.bytes`).
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
}

/// Takes one complete frame (without its prefix) off the front of `buf`. `Ok(None)` means more
/// bytes are needed; the size is checked against `max_size` as soon as the prefix is in.
pub fn next_frame(buf: &mut BytesMut, max_size: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 {
        return Err(FrameError::NegativeSize(size));
    }
    let size = size as usize;
    if size > max_size {
        return Err(FrameError::TooLarge {
            size,
            max: max_size,
        });
    }
    if buf.len() < 4 + size {
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 2][..]);
        assert_eq!(next_frame(&mut buf, 100), Ok(None));
        buf.extend_from_slice(&[3, 0, 0]);
        assert_eq!(
            next_frame(&mut buf, 100).expect("frame").as_deref(),
            Some(&[1u8, 2, 3][..])
        );
        assert_eq!(&buf[..], &[0, 0]);
        assert_eq!(next_frame(&mut buf, 100), Ok(None));
    }

    #[test]
    fn oversized_and_negative_sizes_are_refused_before_reading_the_body() {
        let mut buf = BytesMut::from(&[0u8, 0, 1, 0][..]);
        assert_eq!(
            next_frame(&mut buf, 255),
            Err(FrameError::TooLarge {
                size: 256,
                max: 255
            })
        );
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert_eq!(next_frame(&mut buf, 255), Err(FrameError::NegativeSize(-1)));
    }
}
