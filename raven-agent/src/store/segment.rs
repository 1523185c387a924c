//! Segment files: the durable form of a stream's records.
//!
//! Invariants:
//! - A segment holds records of one stream in sequence order; its blocks
//!   follow each other without gaps in sequence numbers.
//! - A block is durable only as a whole: it is written with one `write_all`
//!   and `fdatasync`ed before anyone is told about it. A block whose CRC
//!   does not match is never decoded.
//! - Reading never trusts a length from the file beyond the bytes present
//!   and the format's limits.
//! - A segment's header version decides the layout of all its blocks. This
//!   Raven writes version 2 and reads versions 1 and 2; a newer version is
//!   refused (the segment is quarantined, never rewritten).
//! - Both layouts carry the same record: reading a version-1 and a
//!   version-2 block of the same records gives equal [`StoredRecord`]s.
//!
//! Format (little-endian; `docs/segment-format.md` has the full table):
//!
//! ```text
//! header  "RAVNSEG1" | version u16 | stream u8 | codec u8 | created_ns u64      (20 bytes)
//! block   len u32 | crc32c u32 | first_seq u64 | records u32 | data[len]
//!         crc32c covers first_seq, records and data; data is the codec's
//!         compression of the block's frame (codec 1 gzip, 2 zstd; one
//!         codec per segment, recorded in its header and in the index)
//! flags   bit 0 truncated, bits 1-3 via (0 xdp, 1 socket, 2 tcp, 3 tls, 4 file)
//! ```
//!
//! Version 2 frame: the records' fields as columns, so that the compressor
//! sees like bytes together (varints are LEB128, signed ones zigzag; seq is
//! implicit: first_seq, first_seq + 1, ...):
//!
//! ```text
//! captured_ns   u64 of the first record, then n-1 varint deltas (signed)
//! sources       varint k, k x [16] (IPv4 mapped), n x varint index into them
//! src_port      n x signed varint delta from the previous record (first from 0)
//! dst_port      n x signed varint delta, likewise
//! flags         n x u8
//! ifindex       n x varint
//! payload_len   n x varint
//! wire_len      n x signed varint (wire_len - payload_len)
//! decoded_len   n x varint (0: none)
//! error_len     n x varint (0: none)
//! payloads | decoded fields (`fields.rs`: compact, strings found in the
//!            payload stored as their place there) | parse errors
//! ```
//!
//! Version 1 frame (read only): per record `seq u64 | captured_ns u64 |
//! src_ip [16] | src_port u16 | dst_port u16 | flags u8 | ifindex u32 |
//! wire_len u32 | payload_len u32 | payload | decoded_len u32 | decoded JSON
//! | parse_error_len u16 | parse_error`.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compression, read::GzDecoder, write::GzEncoder};

use super::{
    NewRecord, StoreError, StoredRecord,
    fields::{Fields, Reader, put_i64, put_u64},
};
use crate::record::{Record, Stream, Via};

pub const MAGIC: &[u8; 8] = b"RAVNSEG1";
/// The layout this Raven writes.
pub const VERSION: u16 = 2;
/// The oldest layout it reads.
pub const OLDEST_VERSION: u16 = 1;
pub const HEADER_LEN: u64 = 20;
pub const BLOCK_HEADER_LEN: u64 = 20;
/// Larger blocks are refused on read: a corrupt length never makes Raven
/// allocate gigabytes.
pub const MAX_BLOCK_BYTES: u32 = 64 << 20;
/// Decompressed bytes a block may expand to (bounded against zip bombs).
const MAX_FRAME_BYTES: u64 = 512 << 20;

/// How a segment's blocks are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// gzip (DEFLATE) through flate2's zlib-rs backend; levels 1-9.
    #[default]
    Gzip = 1,
    /// Zstandard; levels 1-19.
    Zstd = 2,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Codec::Gzip => 1..=9,
            Codec::Zstd => 1..=19,
        }
    }

    fn from_id(id: u8) -> Option<Codec> {
        match id {
            1 => Some(Codec::Gzip),
            2 => Some(Codec::Zstd),
            _ => None,
        }
    }

    pub(crate) fn compress(self, frame: &[u8], level: u32) -> io::Result<Vec<u8>> {
        match self {
            Codec::Gzip => {
                let mut encoder = GzEncoder::new(Vec::new(), Compression::new(level));
                encoder.write_all(frame)?;
                encoder.finish()
            }
            Codec::Zstd => zstd::bulk::compress(frame, level as i32),
        }
    }

    /// Decompresses at most [`MAX_FRAME_BYTES`] (a bound against zip bombs
    /// in a damaged or hostile file).
    fn decompress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut frame = Vec::new();
        match self {
            Codec::Gzip => GzDecoder::new(data).take(MAX_FRAME_BYTES).read_to_end(&mut frame)?,
            Codec::Zstd => zstd::stream::read::Decoder::new(data)?
                .take(MAX_FRAME_BYTES)
                .read_to_end(&mut frame)?,
        };
        Ok(frame)
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(name: &str) -> Result<Codec, String> {
        match name {
            "gzip" => Ok(Codec::Gzip),
            "zstd" => Ok(Codec::Zstd),
            other => Err(format!("unknown codec {other:?}")),
        }
    }
}

pub fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

pub fn from_nanos(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

pub fn write_header(
    file: &mut File,
    version: u16,
    stream: Stream,
    codec: Codec,
    created: SystemTime,
) -> io::Result<()> {
    let mut header = BytesMut::with_capacity(HEADER_LEN as usize);
    header.put_slice(MAGIC);
    header.put_u16_le(version);
    header.put_u8(stream.id());
    header.put_u8(codec as u8);
    header.put_u64_le(nanos(created));
    file.write_all(&header)
}

pub struct Header {
    pub version: u16,
    pub stream: Stream,
    pub codec: Codec,
    pub created: SystemTime,
}

pub fn read_header(file: &mut File) -> Result<Header, String> {
    let mut raw = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut raw).map_err(|e| format!("header: {e}"))?;
    if &raw[..8] != MAGIC {
        return Err("not a Raven segment (bad magic)".into());
    }
    let mut rest = &raw[8..];
    let version = rest.get_u16_le();
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(format!(
            "segment version {version} (this Raven reads {OLDEST_VERSION} to {VERSION})"
        ));
    }
    let stream = Stream::from_id(rest.get_u8()).ok_or("unknown stream id")?;
    let codec = rest.get_u8();
    let codec = Codec::from_id(codec).ok_or_else(|| format!("unknown codec {codec}"))?;
    Ok(Header { version, stream, codec, created: from_nanos(rest.get_u64_le()) })
}

fn via_bits(via: Via) -> u8 {
    match via {
        Via::Xdp => 0,
        Via::Socket => 1,
        Via::Tcp => 2,
        Via::Tls => 3,
        Via::File => 4,
    }
}

fn via_from_bits(bits: u8) -> Via {
    match bits {
        1 => Via::Socket,
        2 => Via::Tcp,
        3 => Via::Tls,
        4 => Via::File,
        _ => Via::Xdp,
    }
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
    .octets()
}

fn unmapped(octets: [u8; 16]) -> IpAddr {
    let ip = Ipv6Addr::from(octets);
    ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)
}

/// The parse error as stored: at most `u16::MAX` bytes (as version 1).
fn error_bytes(new: &NewRecord) -> &[u8] {
    let error = new.parse_error.as_deref().unwrap_or_default().as_bytes();
    &error[..error.len().min(u16::MAX as usize)]
}

/// The version-2 frame of `records` (see the module doc).
fn frame_v2(records: &[NewRecord]) -> Vec<u8> {
    let payload_bytes: usize = records.iter().map(|r| r.record.payload.len()).sum();
    let mut frame = Vec::with_capacity(payload_bytes + records.len() * 24 + 64);
    let mut previous = 0u64;
    for (i, new) in records.iter().enumerate() {
        let t = nanos(new.record.captured_at);
        if i == 0 {
            frame.put_u64_le(t);
        } else {
            put_i64(&mut frame, t.wrapping_sub(previous) as i64);
        }
        previous = t;
    }
    // Sources: a block rarely holds more than a few exporters.
    let mut sources: Vec<IpAddr> = Vec::new();
    let mut indexes = Vec::with_capacity(records.len());
    for new in records {
        let ip = new.record.src.ip();
        let at = sources.iter().position(|s| *s == ip).unwrap_or_else(|| {
            sources.push(ip);
            sources.len() - 1
        });
        indexes.push(at as u64);
    }
    put_u64(&mut frame, sources.len() as u64);
    for ip in &sources {
        frame.put_slice(&mapped(*ip));
    }
    for at in indexes {
        put_u64(&mut frame, at);
    }
    for port in [|r: &Record| r.src.port(), |r: &Record| r.dst_port] {
        let mut previous = 0i64;
        for new in records {
            let p = i64::from(port(&new.record));
            put_i64(&mut frame, p - previous);
            previous = p;
        }
    }
    for new in records {
        frame.push(u8::from(new.record.truncated) | (via_bits(new.record.via) << 1));
    }
    for new in records {
        put_u64(&mut frame, u64::from(new.record.ifindex));
    }
    for new in records {
        put_u64(&mut frame, new.record.payload.len() as u64);
    }
    for new in records {
        let r = &new.record;
        put_i64(&mut frame, i64::from(r.wire_len) - r.payload.len() as i64);
    }
    let mut fields = Fields::default();
    // About what a syslog record's compact fields take, so the buffer
    // rarely grows (each growth copies all of it).
    let mut decoded = Vec::with_capacity(records.len() * 48);
    let mut decoded_lens = Vec::with_capacity(records.len());
    for new in records {
        let before = decoded.len();
        if let Some(object) = &new.decoded {
            fields.encode(object, &new.record.payload, &mut decoded);
        }
        decoded_lens.push((decoded.len() - before) as u64);
    }
    for len in decoded_lens {
        put_u64(&mut frame, len);
    }
    for new in records {
        put_u64(&mut frame, error_bytes(new).len() as u64);
    }
    for new in records {
        frame.put_slice(&new.record.payload);
    }
    frame.extend_from_slice(&decoded);
    for new in records {
        frame.put_slice(error_bytes(new));
    }
    frame
}

/// Frames (version 2) and compresses records numbered from `first_seq`
/// into one block (header included). Returns the block and the
/// uncompressed frame size.
#[cfg(test)]
pub fn encode_block(
    first_seq: u64,
    records: &[NewRecord],
    codec: Codec,
    level: u32,
) -> io::Result<(Vec<u8>, usize)> {
    let data = compress_block(records, codec, level)?;
    Ok((data.seal(first_seq), data.frame_len))
}

/// A version-2 block's records framed and compressed, before it has its
/// sequence numbers: the frame holds none (they are `first_seq`, `+1`, …
/// from the block header), so the store compresses outside its lock and
/// numbers the block when it writes it.
pub struct CompressedBlock {
    data: Vec<u8>,
    records: usize,
    /// Bytes of the uncompressed frame.
    pub frame_len: usize,
}

impl CompressedBlock {
    /// The block as written: header (numbered from `first_seq`), CRC, data.
    pub fn seal(&self, first_seq: u64) -> Vec<u8> {
        seal_block(first_seq, self.records, &self.data)
    }
}

/// Frames (version 2) and compresses records into a block still to be
/// numbered.
pub fn compress_block(
    records: &[NewRecord],
    codec: Codec,
    level: u32,
) -> io::Result<CompressedBlock> {
    let frame = frame_v2(records);
    let data = codec.compress(&frame, level)?;
    Ok(CompressedBlock { data, records: records.len(), frame_len: frame.len() })
}

/// Block header and CRC around compressed data.
fn seal_block(first_seq: u64, records: usize, data: &[u8]) -> Vec<u8> {
    let mut block = Vec::with_capacity(BLOCK_HEADER_LEN as usize + data.len());
    block.put_u32_le(data.len() as u32);
    block.put_u32_le(0); // CRC, filled in below
    block.put_u64_le(first_seq);
    block.put_u32_le(records as u32);
    block.extend_from_slice(data);
    let crc = crc32c::crc32c(&block[8..]);
    block[4..8].copy_from_slice(&crc.to_le_bytes());
    block
}

/// The version-1 writer, kept to test that this Raven reads what older
/// ones wrote.
#[cfg(test)]
pub fn encode_block_v1(
    first_seq: u64,
    records: &[NewRecord],
    codec: Codec,
    level: u32,
) -> io::Result<Vec<u8>> {
    let mut frame = BytesMut::new();
    for (i, new) in records.iter().enumerate() {
        let r = &new.record;
        frame.put_u64_le(first_seq + i as u64);
        frame.put_u64_le(nanos(r.captured_at));
        frame.put_slice(&mapped(r.src.ip()));
        frame.put_u16_le(r.src.port());
        frame.put_u16_le(r.dst_port);
        frame.put_u8(u8::from(r.truncated) | (via_bits(r.via) << 1));
        frame.put_u32_le(r.ifindex);
        frame.put_u32_le(r.wire_len);
        frame.put_u32_le(r.payload.len() as u32);
        frame.put_slice(&r.payload);
        let decoded = new.decoded.as_ref().map(|d| serde_json::to_vec(d).unwrap());
        let decoded = decoded.as_deref().unwrap_or_default();
        frame.put_u32_le(decoded.len() as u32);
        frame.put_slice(decoded);
        let error = error_bytes(new);
        frame.put_u16_le(error.len() as u16);
        frame.put_slice(error);
    }
    Ok(seal_block(first_seq, records.len(), &codec.compress(&frame, level)?))
}

/// Where a block sits in its file and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMeta {
    pub offset: u64,
    pub len: u32,
    pub first_seq: u64,
    pub records: u32,
    /// The layout of its frame: its segment's header version.
    pub version: u16,
}

impl BlockMeta {
    pub fn end(&self) -> u64 {
        self.offset + BLOCK_HEADER_LEN + u64::from(self.len)
    }

    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.records).saturating_sub(1)
    }
}

/// What a scan of a segment file found.
#[derive(Debug)]
pub struct Scan {
    pub version: u16,
    pub codec: Codec,
    pub blocks: Vec<BlockMeta>,
    /// Bytes of header plus whole, valid blocks.
    pub valid_len: u64,
    pub file_len: u64,
    /// Bytes after the last valid block that do not form a valid block
    /// and run to the end of the file: an interrupted write.
    pub torn_tail: bool,
    /// A block that fails its CRC (or is inconsistent) with data after it:
    /// damage, not an interrupted write.
    pub corrupt: Option<String>,
}

/// Walks the block headers. With `verify`, reads each block and checks its
/// CRC; without, trusts the data (sealed segments at start-up).
pub fn scan(path: &Path, verify: bool) -> Result<Scan, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let Header { version, codec, .. } = read_header(&mut file)?;
    let mut blocks: Vec<BlockMeta> = Vec::new();
    let mut offset = HEADER_LEN;
    let mut corrupt = None;
    let mut torn_tail = false;
    let mut data = Vec::new();
    while offset < file_len {
        let mut head = [0u8; BLOCK_HEADER_LEN as usize];
        if file_len - offset < BLOCK_HEADER_LEN {
            torn_tail = true;
            break;
        }
        file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        file.read_exact(&mut head).map_err(|e| e.to_string())?;
        let mut h = &head[..];
        let (len, crc, first_seq, records) =
            (h.get_u32_le(), h.get_u32_le(), h.get_u64_le(), h.get_u32_le());
        let end = offset + BLOCK_HEADER_LEN + u64::from(len);
        if len > MAX_BLOCK_BYTES || end > file_len {
            // A length past the end: the block's write did not finish.
            torn_tail = true;
            break;
        }
        let expected_seq = blocks.last().map(|b| b.last_seq() + 1);
        let consistent = records > 0 && expected_seq.is_none_or(|s| s == first_seq);
        let crc_ok = !verify || {
            data.resize(len as usize, 0);
            file.read_exact(&mut data).map_err(|e| e.to_string())?;
            let mut hasher_input = Vec::with_capacity(12 + data.len());
            hasher_input.extend_from_slice(&head[8..]);
            hasher_input.extend_from_slice(&data);
            crc32c::crc32c(&hasher_input) == crc
        };
        if !crc_ok || !consistent {
            if end == file_len {
                torn_tail = true;
            } else {
                corrupt = Some(format!(
                    "block at byte {offset}: {}",
                    if crc_ok { "sequence numbers out of order" } else { "CRC mismatch" }
                ));
            }
            break;
        }
        blocks.push(BlockMeta { offset, len, first_seq, records, version });
        offset = end;
    }
    let valid_len = blocks.last().map_or(HEADER_LEN, |b| b.end());
    Ok(Scan { version, codec, blocks, valid_len, file_len, torn_tail, corrupt })
}

/// Reads, checks and decodes one block.
pub fn read_block(
    file: &mut File,
    block: &BlockMeta,
    stream: Stream,
    codec: Codec,
) -> Result<Vec<StoredRecord>, StoreError> {
    let damaged = |why: String| StoreError::Damaged { offset: block.offset, reason: why };
    let mut raw = vec![0u8; BLOCK_HEADER_LEN as usize + block.len as usize];
    file.seek(SeekFrom::Start(block.offset)).map_err(StoreError::Io)?;
    file.read_exact(&mut raw).map_err(|e| damaged(e.to_string()))?;
    let crc = u32::from_le_bytes(raw[4..8].try_into().expect("4 bytes"));
    if crc32c::crc32c(&raw[8..]) != crc {
        return Err(damaged("CRC mismatch".into()));
    }
    let frame = codec
        .decompress(&raw[BLOCK_HEADER_LEN as usize..])
        .map_err(|e| damaged(format!("decompress: {e}")))?;
    let frame = Bytes::from(frame);
    match block.version {
        1 => decode_frame_v1(frame, block.records, stream),
        _ => decode_frame_v2(frame, block.first_seq, block.records, stream),
    }
    .map_err(damaged)
}

fn decode_frame_v1(
    mut frame: Bytes,
    records: u32,
    stream: Stream,
) -> Result<Vec<StoredRecord>, String> {
    let mut out = Vec::with_capacity(records.min(65_536) as usize);
    let short = || "frame shorter than its records".to_string();
    let take = |frame: &mut Bytes, n: usize| -> Result<Bytes, String> {
        if frame.remaining() < n { Err(short()) } else { Ok(frame.split_to(n)) }
    };
    for _ in 0..records {
        if frame.remaining() < 8 + 8 + 16 + 2 + 2 + 1 + 4 + 4 + 4 {
            return Err(short());
        }
        let seq = frame.get_u64_le();
        let captured = frame.get_u64_le();
        let mut ip = [0u8; 16];
        frame.copy_to_slice(&mut ip);
        let ip = unmapped(ip);
        let src_port = frame.get_u16_le();
        let dst_port = frame.get_u16_le();
        let flags = frame.get_u8();
        let ifindex = frame.get_u32_le();
        let wire_len = frame.get_u32_le();
        let payload_len = frame.get_u32_le() as usize;
        let payload = take(&mut frame, payload_len)?;
        if frame.remaining() < 4 {
            return Err(short());
        }
        let decoded_len = frame.get_u32_le() as usize;
        let decoded = take(&mut frame, decoded_len)?;
        if frame.remaining() < 2 {
            return Err(short());
        }
        let error_len = frame.get_u16_le() as usize;
        let error = take(&mut frame, error_len)?;
        out.push(StoredRecord {
            seq,
            record: Record {
                captured_at: from_nanos(captured),
                stream,
                src: SocketAddr::new(ip, src_port),
                dst_port,
                ifindex,
                wire_len,
                truncated: flags & 1 != 0,
                via: via_from_bits((flags >> 1) & 0b111),
                payload,
            },
            decoded: (!decoded.is_empty()).then_some(decoded),
            parse_error: (!error.is_empty()).then(|| String::from_utf8_lossy(&error).into_owned()),
        });
    }
    Ok(out)
}

fn decode_frame_v2(
    frame: Bytes,
    first_seq: u64,
    records: u32,
    stream: Stream,
) -> Result<Vec<StoredRecord>, String> {
    let n = records as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    // Every record takes at least one byte in each column: a count beyond
    // the frame is damage, refused before anything is sized by it.
    if n > frame.len() {
        return Err(format!("{n} records in a frame of {} bytes", frame.len()));
    }
    let mut r = Reader { rest: &frame };
    let mut captured = Vec::with_capacity(n);
    let first = r.bytes(8)?;
    let mut t = u64::from_le_bytes(first.try_into().expect("8 bytes"));
    captured.push(t);
    for _ in 1..n {
        t = t.wrapping_add(r.i64()? as u64);
        captured.push(t);
    }
    let k = r.length()?;
    let mut sources = Vec::new();
    for _ in 0..k {
        sources.push(unmapped(r.bytes(16)?.try_into().expect("16 bytes")));
    }
    let mut src = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.u64()?;
        src.push(*sources.get(at as usize).ok_or_else(|| format!("source {at} of {k}"))?);
    }
    let mut ports = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for column in &mut ports {
        let mut previous = 0i64;
        for _ in 0..n {
            previous = previous.checked_add(r.i64()?).ok_or("port out of range")?;
            column.push(u16::try_from(previous).map_err(|_| "port out of range")?);
        }
    }
    let flags = r.bytes(n)?.to_vec();
    let column = |r: &mut Reader<'_>, what: &str| -> Result<Vec<u32>, String> {
        (0..n)
            .map(|_| u32::try_from(r.u64()?).map_err(|_| format!("{what} out of range")))
            .collect()
    };
    let ifindex = column(&mut r, "ifindex")?;
    let payload_len = column(&mut r, "payload length")?;
    let mut wire_len = Vec::with_capacity(n);
    for len in &payload_len {
        let wire = r.i64()?.checked_add(i64::from(*len)).and_then(|w| u32::try_from(w).ok());
        wire_len.push(wire.ok_or("wire length out of range")?);
    }
    let decoded_len = column(&mut r, "decoded length")?;
    let error_len = column(&mut r, "parse error length")?;
    // The sections after the columns: payloads, decoded fields, errors.
    let mut at = frame.len() - r.rest.len();
    let mut section = |lens: &[u32]| -> Result<Vec<Bytes>, String> {
        lens.iter()
            .map(|&len| {
                let end = at + len as usize;
                if end > frame.len() {
                    return Err("frame shorter than its records".to_string());
                }
                let part = frame.slice(at..end);
                at = end;
                Ok(part)
            })
            .collect()
    };
    let payloads = section(&payload_len)?;
    let decoded = section(&decoded_len)?;
    let errors = section(&error_len)?;
    if at != frame.len() {
        return Err("bytes after the last record".into());
    }
    let mut fields = Fields::default();
    let mut out = Vec::with_capacity(n);
    for (i, payload) in payloads.into_iter().enumerate() {
        let decoded =
            if decoded[i].is_empty() { None } else { Some(fields.decode(&decoded[i], &payload)?) };
        out.push(StoredRecord {
            seq: first_seq + i as u64,
            record: Record {
                captured_at: from_nanos(captured[i]),
                stream,
                src: SocketAddr::new(src[i], ports[0][i]),
                dst_port: ports[1][i],
                ifindex: ifindex[i],
                wire_len: wire_len[i],
                truncated: flags[i] & 1 != 0,
                via: via_from_bits((flags[i] >> 1) & 0b111),
                payload,
            },
            decoded: decoded.filter(|d| !d.is_empty()),
            parse_error: (!errors[i].is_empty())
                .then(|| String::from_utf8_lossy(&errors[i]).into_owned()),
        });
    }
    Ok(out)
}
