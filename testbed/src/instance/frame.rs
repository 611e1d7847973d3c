//! Framing of events on the data plane.
//!
//! Instances exchange events over plain TCP. Every frame starts with a fixed 21-byte header
//! whose integers are little-endian:
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 1 | `kind` | 1 = data, 2 = end of stream, 3 = acknowledgement |
//! | 1 | 8 | `seq` | data: the event's sequence number; end: data frames sent on this connection; ack: number of ranges |
//! | 9 | 8 | `created_ns` | data: Unix time in nanoseconds when the source created the event; end: the sender's replica index plus one (0: not given) |
//! | 17 | 4 | `len` | payload length in bytes |
//!
//! The payload follows the header. An end frame has no payload and is the last frame that a
//! sender writes on a connection before it closes it. Data and end frames go from an upstream
//! instance to a downstream one. Ack frames go the other way on the same connection: their
//! payload is a list of half-open ranges `[start, end)` of sequence numbers, each as two
//! little-endian `u64`, which the receiver has handled and the sender may forget.

use thiserror::Error;

/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 21;

/// Maximum payload a receiver accepts, in bytes. A larger length means a corrupt stream.
pub const MAX_PAYLOAD_LEN: u32 = 256 * 1024 * 1024;

/// Kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Data = 1,
    End = 2,
    Ack = 3,
}

/// Bytes of one range in an ack frame's payload.
pub const ACK_RANGE_LEN: usize = 16;

/// Decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub seq: u64,
    pub created_ns: u64,
    pub len: u32,
}

/// Violation of the framing rules found while decoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("unknown frame kind {0} (expected 1 = data, 2 = end or 3 = ack)")]
    UnknownKind(u8),
    #[error("ack frame of {ranges} ranges has a payload of {len} bytes (expected 16 per range)")]
    AckLength { ranges: u64, len: u32 },
    #[error("ack frame has a range that ends before it starts: {start}..{end}")]
    AckRange { start: u64, end: u64 },
    #[error("end frame declares a payload of {0} bytes (end frames have none)")]
    EndWithPayload(u32),
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
}

impl FrameHeader {
    /// Creates the header of a data frame.
    pub fn data(seq: u64, created_ns: u64, len: u32) -> Self {
        Self { kind: FrameKind::Data, seq, created_ns, len }
    }

    /// Creates the header of an end frame that announces `frames_sent` data frames, sent by
    /// replica `sender` of its stage. A receiver counts one end per sending replica, so the
    /// end frame of a replacement does not count again if the replica it replaces sent one.
    pub fn end(frames_sent: u64, sender: Option<u32>) -> Self {
        let created_ns = sender.map_or(0, |replica| u64::from(replica) + 1);
        Self { kind: FrameKind::End, seq: frames_sent, created_ns, len: 0 }
    }

    /// Returns the sending replica's index that an end frame carries, if it carries one.
    pub fn end_sender(&self) -> Option<u32> {
        match self.kind {
            FrameKind::End => {
                self.created_ns.checked_sub(1).and_then(|index| index.try_into().ok())
            }
            FrameKind::Data | FrameKind::Ack => None,
        }
    }

    /// Size of the whole frame, header included, in bytes.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    ///
    /// # Panics
    ///
    /// Panics if `out` is shorter than [`HEADER_LEN`]; callers size their buffers from
    /// [`FrameHeader::frame_len`].
    pub fn encode_into(&self, out: &mut [u8]) {
        out[0] = self.kind as u8;
        out[1..9].copy_from_slice(&self.seq.to_le_bytes());
        out[9..17].copy_from_slice(&self.created_ns.to_le_bytes());
        out[17..21].copy_from_slice(&self.len.to_le_bytes());
    }

    /// Returns the header as bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        self.encode_into(&mut out);
        out
    }

    /// Decodes the header at the start of `bytes`.
    ///
    /// Returns `Ok(None)` when fewer than [`HEADER_LEN`] bytes are available, because the
    /// rest of the header has not arrived yet.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, FrameError> {
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let kind = match header[0] {
            1 => FrameKind::Data,
            2 => FrameKind::End,
            3 => FrameKind::Ack,
            other => return Err(FrameError::UnknownKind(other)),
        };
        let seq = u64::from_le_bytes(header[1..9].try_into().expect("slice of 8 bytes"));
        let created_ns = u64::from_le_bytes(header[9..17].try_into().expect("slice of 8 bytes"));
        let len = u32::from_le_bytes(header[17..21].try_into().expect("slice of 4 bytes"));
        if kind == FrameKind::End && len != 0 {
            return Err(FrameError::EndWithPayload(len));
        }
        if len > MAX_PAYLOAD_LEN {
            return Err(FrameError::TooLarge { len, max: MAX_PAYLOAD_LEN });
        }
        if kind == FrameKind::Ack && seq.checked_mul(ACK_RANGE_LEN as u64) != Some(u64::from(len)) {
            return Err(FrameError::AckLength { ranges: seq, len });
        }
        Ok(Some(Self { kind, seq, created_ns, len }))
    }
}

/// Appends a whole data frame to `out`.
pub fn push_data_frame(out: &mut Vec<u8>, seq: u64, created_ns: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length fits in u32");
    out.extend_from_slice(&FrameHeader::data(seq, created_ns, len).to_bytes());
    out.extend_from_slice(payload);
}

/// Appends an ack frame for `ranges` to `out`.
pub fn push_ack_frame(out: &mut Vec<u8>, ranges: &[std::ops::Range<u64>]) {
    let len = u32::try_from(ranges.len() * ACK_RANGE_LEN).expect("ack payload fits in u32");
    let header = FrameHeader { kind: FrameKind::Ack, seq: ranges.len() as u64, created_ns: 0, len };
    out.extend_from_slice(&header.to_bytes());
    for range in ranges {
        out.extend_from_slice(&range.start.to_le_bytes());
        out.extend_from_slice(&range.end.to_le_bytes());
    }
}

/// Decodes the ranges of an ack frame's payload. A payload whose length is not the header's
/// range count times 16 bytes, as in a truncated frame, is an error.
pub fn decode_ack(
    header: &FrameHeader,
    payload: &[u8],
) -> Result<Vec<std::ops::Range<u64>>, FrameError> {
    let expected = header.seq.checked_mul(ACK_RANGE_LEN as u64);
    if header.kind != FrameKind::Ack || expected != Some(payload.len() as u64) {
        return Err(FrameError::AckLength { ranges: header.seq, len: payload.len() as u32 });
    }
    payload
        .chunks_exact(ACK_RANGE_LEN)
        .map(|chunk| {
            let start = u64::from_le_bytes(chunk[..8].try_into().expect("slice of 8 bytes"));
            let end = u64::from_le_bytes(chunk[8..].try_into().expect("slice of 8 bytes"));
            if end < start {
                return Err(FrameError::AckRange { start, end });
            }
            Ok(start..end)
        })
        .collect()
}

/// Sorts `seqs` and merges them into the fewest half-open ranges.
pub fn coalesce_ranges(seqs: &mut [u64]) -> Vec<std::ops::Range<u64>> {
    seqs.sort_unstable();
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    for &seq in seqs.iter() {
        match ranges.last_mut() {
            Some(last) if seq <= last.end => last.end = last.end.max(seq.saturating_add(1)),
            _ => ranges.push(seq..seq.saturating_add(1)),
        }
    }
    ranges
}

/// One complete frame found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub payload: &'a [u8],
}

/// Iterator over the complete frames at the start of a buffer.
///
/// It stops at the first incomplete frame, whose bytes start at [`FrameReader::consumed`],
/// or at the first frame that breaks the framing rules.
#[derive(Debug)]
pub struct FrameReader<'a> {
    bytes: &'a [u8],
    consumed: usize,
    failed: bool,
}

impl<'a> FrameReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, consumed: 0, failed: false }
    }

    /// Number of bytes taken by the complete frames returned so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Size of the frame that starts at [`FrameReader::consumed`], if its header is complete.
    pub fn pending_frame_len(&self) -> Option<usize> {
        match FrameHeader::decode(&self.bytes[self.consumed..]) {
            Ok(Some(header)) => Some(header.frame_len()),
            _ => None,
        }
    }
}

impl<'a> Iterator for FrameReader<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = &self.bytes[self.consumed..];
        let header = match FrameHeader::decode(rest) {
            Ok(Some(header)) => header,
            Ok(None) => return None,
            Err(err) => {
                self.failed = true;
                return Some(Err(err));
            }
        };
        let payload = rest.get(HEADER_LEN..header.frame_len())?;
        self.consumed += header.frame_len();
        Some(Ok(Frame { header, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_frame_round_trips() {
        let mut buf = Vec::new();
        push_data_frame(&mut buf, 42, 1_700_000_000_000_000_000, b"hello");
        assert_eq!(buf.len(), HEADER_LEN + 5);

        let mut reader = FrameReader::new(&buf);
        let frame = reader.next().expect("one frame").expect("valid frame");
        assert_eq!(frame.header, FrameHeader::data(42, 1_700_000_000_000_000_000, 5));
        assert_eq!(frame.payload, b"hello");
        assert!(reader.next().is_none());
        assert_eq!(reader.consumed(), buf.len());
    }

    #[test]
    fn header_layout_is_little_endian() {
        let bytes = FrameHeader::data(0x0102, 0x0304, 0x0506).to_bytes();
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..3], &[0x02, 0x01]);
        assert_eq!(&bytes[9..11], &[0x04, 0x03]);
        assert_eq!(&bytes[17..19], &[0x06, 0x05]);
    }

    #[test]
    fn end_frame_carries_frame_count() {
        let bytes = FrameHeader::end(10_000, Some(3)).to_bytes();
        let header = FrameHeader::decode(&bytes).expect("valid").expect("complete");
        assert_eq!(header.kind, FrameKind::End);
        assert_eq!(header.seq, 10_000);
        assert_eq!(header.frame_len(), HEADER_LEN);
    }

    #[test]
    fn truncated_frame_is_left_for_next_read() {
        let mut buf = Vec::new();
        push_data_frame(&mut buf, 1, 0, &[7; 100]);
        push_data_frame(&mut buf, 2, 0, &[8; 100]);
        let whole_first = HEADER_LEN + 100;

        // Cut inside the second frame's payload, then inside its header.
        for cut in [buf.len() - 1, whole_first + 3] {
            let mut reader = FrameReader::new(&buf[..cut]);
            let first = reader.next().expect("first frame").expect("valid");
            assert_eq!(first.header.seq, 1);
            assert!(reader.next().is_none(), "cut at {cut} returned a partial frame");
            assert_eq!(reader.consumed(), whole_first);
        }

        let reader = FrameReader::new(&buf[..whole_first + HEADER_LEN]);
        assert_eq!(reader.pending_frame_len(), Some(whole_first));
    }

    #[test]
    fn truncated_header_decodes_to_none() {
        let bytes = FrameHeader::data(1, 2, 3).to_bytes();
        assert_eq!(FrameHeader::decode(&bytes[..HEADER_LEN - 1]), Ok(None));
        assert_eq!(FrameHeader::decode(&[]), Ok(None));
    }

    #[test]
    fn invalid_headers_are_rejected() {
        let mut unknown = FrameHeader::data(1, 2, 3).to_bytes();
        unknown[0] = 9;
        assert_eq!(FrameHeader::decode(&unknown), Err(FrameError::UnknownKind(9)));

        let mut end_with_payload = FrameHeader::end(1, None).to_bytes();
        end_with_payload[17] = 4;
        assert_eq!(FrameHeader::decode(&end_with_payload), Err(FrameError::EndWithPayload(4)));

        let huge = FrameHeader::data(1, 2, MAX_PAYLOAD_LEN + 1).to_bytes();
        assert_eq!(
            FrameHeader::decode(&huge),
            Err(FrameError::TooLarge { len: MAX_PAYLOAD_LEN + 1, max: MAX_PAYLOAD_LEN })
        );
    }

    #[test]
    fn ack_frame_round_trips_ranges() {
        let mut seqs = vec![7, 3, 4, 5, 100, 6, 101, 4];
        let ranges = coalesce_ranges(&mut seqs);
        assert_eq!(ranges, vec![3..8, 100..102]);

        let mut buf = Vec::new();
        push_ack_frame(&mut buf, &ranges);
        assert_eq!(buf.len(), HEADER_LEN + 2 * ACK_RANGE_LEN);
        let frame = FrameReader::new(&buf).next().expect("one frame").expect("valid frame");
        assert_eq!(frame.header.kind, FrameKind::Ack);
        assert_eq!(decode_ack(&frame.header, frame.payload), Ok(ranges));
    }

    #[test]
    fn truncated_ack_frame_is_an_error() {
        let mut buf = Vec::new();
        push_ack_frame(&mut buf, &[1..5, 9..12]);
        let header = FrameHeader::decode(&buf).expect("valid").expect("complete");
        let payload = &buf[HEADER_LEN..buf.len() - 3];
        assert_eq!(decode_ack(&header, payload), Err(FrameError::AckLength { ranges: 2, len: 29 }));

        let mut bad_len = buf[..HEADER_LEN].to_vec();
        bad_len[17] = 5;
        assert_eq!(FrameHeader::decode(&bad_len), Err(FrameError::AckLength { ranges: 2, len: 5 }));

        let mut backwards = Vec::new();
        // Built field by field, because a literal `9..3` reads as a mistake.
        let reversed = std::ops::Range { start: 9, end: 3 };
        push_ack_frame(&mut backwards, std::slice::from_ref(&reversed));
        let header = FrameHeader::decode(&backwards).expect("valid").expect("complete");
        assert_eq!(
            decode_ack(&header, &backwards[HEADER_LEN..]),
            Err(FrameError::AckRange { start: 9, end: 3 })
        );
    }

    #[test]
    fn reader_stops_after_invalid_frame() {
        let mut buf = FrameHeader::data(1, 0, 0).to_bytes().to_vec();
        buf.push(0xff);
        buf.extend_from_slice(&[0; HEADER_LEN - 1]);
        let results: Vec<_> = FrameReader::new(&buf).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert_eq!(results[1], Err(FrameError::UnknownKind(0xff)));
    }
}
