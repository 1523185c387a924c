//! The unit every stage hands on: one received datagram (or message) with its
//! raw bytes and where it came from.
//!
//! Invariants:
//! - `payload` is exactly the bytes Raven received (cut at the snap length
//!   only when `truncated` is set); later stages add fields beside it and
//!   never replace it.
//! - Stages pass records in batches ([`Batch`]), never one at a time.

use std::{fmt, net::SocketAddr, str::FromStr, time::SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A telemetry stream: one protocol family with its own sequence space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Syslog,
    Netflow,
    Ipfix,
    Sflow,
    Snmp,
    /// Windows events posted over HTTP (never on the wire as UDP).
    Windows,
}

impl Stream {
    pub const ALL: [Stream; 6] = [
        Stream::Syslog,
        Stream::Netflow,
        Stream::Ipfix,
        Stream::Sflow,
        Stream::Snmp,
        Stream::Windows,
    ];

    /// The streams captured from UDP datagrams (the XDP program's streams).
    pub const WIRE: [Stream; 5] =
        [Stream::Syslog, Stream::Netflow, Stream::Ipfix, Stream::Sflow, Stream::Snmp];

    pub fn name(self) -> &'static str {
        match self {
            Stream::Syslog => "syslog",
            Stream::Netflow => "netflow",
            Stream::Ipfix => "ipfix",
            Stream::Sflow => "sflow",
            Stream::Snmp => "snmp",
            Stream::Windows => "windows",
        }
    }

    /// The id used in the kernel maps (`raven_common::stream`).
    pub fn id(self) -> u8 {
        use raven_common::stream;
        match self {
            Stream::Syslog => stream::SYSLOG,
            Stream::Netflow => stream::NETFLOW,
            Stream::Ipfix => stream::IPFIX,
            Stream::Sflow => stream::SFLOW,
            Stream::Snmp => stream::SNMP,
            // Past the kernel's ids: Windows events never pass through XDP.
            Stream::Windows => stream::COUNT as u8,
        }
    }

    pub fn from_id(id: u8) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.id() == id)
    }

    /// The IANA-registered port a device sends this stream to by default.
    pub fn default_port(self) -> u16 {
        match self {
            Stream::Syslog => 514,
            Stream::Netflow => 2055,
            Stream::Ipfix => 4739,
            Stream::Sflow => 6343,
            Stream::Snmp => 162,
            Stream::Windows => 8084,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown stream {0:?} (expected one of syslog, netflow, ipfix, sflow, snmp, windows)")]
pub struct UnknownStream(pub String);

impl FromStr for Stream {
    type Err = UnknownStream;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stream::ALL
            .into_iter()
            .find(|stream| stream.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStream(s.to_string()))
    }
}

/// Which capture path delivered a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Copied by the XDP program through the ring buffer.
    Xdp,
    /// Received on the agent's UDP socket (socket-only mode, fragments,
    /// ring overflow).
    Socket,
    /// Syslog over TCP (RFC 6587).
    Tcp,
    /// Syslog over TLS (RFC 5425).
    Tls,
    /// Read from a file (`raven-agent decode`).
    File,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Xdp => "xdp",
            Via::Socket => "socket",
            Via::Tcp => "tcp",
            Via::Tls => "tls",
            Via::File => "file",
        }
    }
}

/// One captured datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When Raven received it (kernel time for XDP, receive time for sockets).
    pub captured_at: SystemTime,
    pub stream: Stream,
    pub src: SocketAddr,
    pub dst_port: u16,
    /// Interface index it arrived on (0 when unknown, e.g. socket path).
    pub ifindex: u32,
    /// Payload length on the wire.
    pub wire_len: u32,
    /// The payload was cut at the snap length.
    pub truncated: bool,
    pub via: Via,
    pub payload: Bytes,
}

/// Records handed from one stage to the next.
pub type Batch = Vec<Record>;

/// A capture time as RFC 3339 (UTC, nanoseconds), as every JSON output
/// of Raven writes it.
pub fn rfc3339(time: SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
