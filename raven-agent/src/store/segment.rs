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
//!
//! Format (little-endian; `docs/segment-format.md` has the full table):
//!
//! ```text
//! header  "RAVNSEG1" | version u16 | stream u8 | codec u8 | created_ns u64      (20 bytes)
//! block   len u32 | crc32c u32 | first_seq u64 | records u32 | data[len]
//!         crc32c covers first_seq, records and data; data is the codec's
//!         compression of the framed records (codec 1 gzip, 2 zstd; one
//!         codec per segment, recorded in its header and in the index):
//! record  seq u64 | captured_ns u64 | src_ip [16] (IPv4 mapped) | src_port u16
//!         | dst_port u16 | flags u8 | ifindex u32 | wire_len u32
//!         | payload_len u32 | payload | decoded_len u32 | decoded
//!         | parse_error_len u16 | parse_error
//! flags   bit 0 truncated, bits 1-3 via (0 xdp, 1 socket, 2 tcp, 3 tls, 4 file)
//! ```

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compression, read::GzDecoder, write::GzEncoder};

use super::{NewRecord, StoreError, StoredRecord};
use crate::record::{Record, Stream, Via};

pub const MAGIC: &[u8; 8] = b"RAVNSEG1";
pub const VERSION: u16 = 1;
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

    fn compress(self, frame: &[u8], level: u32) -> io::Result<Vec<u8>> {
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
    stream: Stream,
    codec: Codec,
    created: SystemTime,
) -> io::Result<()> {
    let mut header = BytesMut::with_capacity(HEADER_LEN as usize);
    header.put_slice(MAGIC);
    header.put_u16_le(VERSION);
    header.put_u8(stream.id());
    header.put_u8(codec as u8);
    header.put_u64_le(nanos(created));
    file.write_all(&header)
}

pub struct Header {
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
    if version != VERSION {
        return Err(format!("segment version {version} (this Raven reads {VERSION})"));
    }
    let stream = Stream::from_id(rest.get_u8()).ok_or("unknown stream id")?;
    let codec = rest.get_u8();
    let codec = Codec::from_id(codec).ok_or_else(|| format!("unknown codec {codec}"))?;
    Ok(Header { stream, codec, created: from_nanos(rest.get_u64_le()) })
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

/// Frames and compresses records numbered from `first_seq` into one block
/// (header included). Returns the block and the uncompressed frame size.
pub fn encode_block(
    first_seq: u64,
    records: &[NewRecord],
    codec: Codec,
    level: u32,
) -> io::Result<(Vec<u8>, usize)> {
    let mut frame = BytesMut::new();
    for (i, new) in records.iter().enumerate() {
        let r = &new.record;
        frame.put_u64_le(first_seq + i as u64);
        frame.put_u64_le(nanos(r.captured_at));
        let ip = match r.src.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        frame.put_slice(&ip.octets());
        frame.put_u16_le(r.src.port());
        frame.put_u16_le(r.dst_port);
        frame.put_u8(u8::from(r.truncated) | (via_bits(r.via) << 1));
        frame.put_u32_le(r.ifindex);
        frame.put_u32_le(r.wire_len);
        frame.put_u32_le(r.payload.len() as u32);
        frame.put_slice(&r.payload);
        let decoded = new.decoded.as_deref().unwrap_or_default();
        frame.put_u32_le(decoded.len() as u32);
        frame.put_slice(decoded);
        let error = new.parse_error.as_deref().unwrap_or_default().as_bytes();
        let error = &error[..error.len().min(u16::MAX as usize)];
        frame.put_u16_le(error.len() as u16);
        frame.put_slice(error);
    }
    let data = codec.compress(&frame, level)?;
    let mut block = Vec::with_capacity(BLOCK_HEADER_LEN as usize + data.len());
    block.put_u32_le(data.len() as u32);
    block.put_u32_le(0); // CRC, filled in below
    block.put_u64_le(first_seq);
    block.put_u32_le(records.len() as u32);
    block.extend_from_slice(&data);
    let crc = crc32c::crc32c(&block[8..]);
    block[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok((block, frame.len()))
}

/// Where a block sits in its file and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMeta {
    pub offset: u64,
    pub len: u32,
    pub first_seq: u64,
    pub records: u32,
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
    let codec = read_header(&mut file)?.codec;
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
        blocks.push(BlockMeta { offset, len, first_seq, records });
        offset = end;
    }
    let valid_len = blocks.last().map_or(HEADER_LEN, |b| b.end());
    Ok(Scan { codec, blocks, valid_len, file_len, torn_tail, corrupt })
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
    decode_frame(Bytes::from(frame), block.records, stream).map_err(damaged)
}

fn decode_frame(
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
        let ip = Ipv6Addr::from(ip);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
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
