//! Link diagnostics for the operator: ping, TCP connect, DNS lookup and an HTTP
//! download throughput test. Each is bounded in time and output.
//!
//! # Invariants
//! - Every request is clamped to [`Limits`]: a diagnostic can neither run for
//!   long nor produce much output, whatever the caller asks.
//! - Failures are results, not errors: a ping without reply is a report with
//!   `received: 0`. Only invalid requests are errors.
//!
//! # Protocol
//! DNS: one RFC 1035 query over UDP (recursion desired) to the given server;
//! answers of type A, AAAA, MX and CNAME are decoded (name compression
//! included), others are shown as their type number and length.
//! Traceroute (IPv4): UDP datagrams to port 33434+TTL with TTL 1, 2, ...; the
//! ICMP time-exceeded / port-unreachable that quotes our datagram names the hop.
//! HTTP: `GET` over plain HTTP/1.1 (`Connection: close`), body counted and dropped.
//!
//! # Operations
//! [`ping`], [`traceroute`], [`tcp_connect`], [`dns_lookup`], [`http_download`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bounds every diagnostic is clamped to.
pub struct Limits;

impl Limits {
    pub const MAX_PING_COUNT: u32 = 20;
    pub const MIN_PING_INTERVAL: Duration = Duration::from_millis(200);
    pub const MAX_PING_SIZE: usize = 1400;
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_DOWNLOAD_BYTES: u64 = 100 * 1024 * 1024;
    pub const MAX_DOWNLOAD_TIME: Duration = Duration::from_secs(30);
    pub const MAX_DNS_ANSWERS: usize = 32;
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("invalid request: {0}")]
    Invalid(String),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PingReport {
    pub target: String,
    pub sent: u32,
    pub received: u32,
    pub loss_percent: f64,
    /// Round-trip times of the replies, in order; `null` for a lost echo.
    pub rtt_ms: Vec<Option<f64>>,
    pub errors: Vec<String>,
}

/// ICMP echo `count` times (clamped to 1..=20), `interval` apart (at least 200 ms),
/// with `size` payload bytes (at most 1400), each waiting up to `timeout` (at most 10 s).
pub async fn ping(
    target: IpAddr,
    count: u32,
    interval: Duration,
    size: usize,
    timeout: Duration,
) -> PingReport {
    let count = count.clamp(1, Limits::MAX_PING_COUNT);
    let interval = interval.max(Limits::MIN_PING_INTERVAL);
    let size = size.min(Limits::MAX_PING_SIZE);
    let timeout = timeout.clamp(Duration::from_millis(1), Limits::MAX_TIMEOUT);
    let ident = fastrand::u16(..);
    let mut report = PingReport {
        target: target.to_string(),
        sent: 0,
        received: 0,
        loss_percent: 0.0,
        rtt_ms: Vec::new(),
        errors: Vec::new(),
    };
    for seq in 0..count {
        if seq > 0 {
            tokio::time::sleep(interval).await;
        }
        let started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            super::health::icmp_echo_blocking(target, timeout, ident, seq as u16, size)
        })
        .await
        .unwrap_or_else(|e| Err(format!("ping task failed: {e}")));
        report.sent += 1;
        match outcome {
            Ok(()) => {
                report.received += 1;
                report.rtt_ms.push(Some(ms(started.elapsed())));
            }
            Err(e) => {
                report.rtt_ms.push(None);
                if report.errors.len() < 5 {
                    report.errors.push(format!("seq {seq}: {e}"));
                }
            }
        }
    }
    report.loss_percent = 100.0 * f64::from(report.sent - report.received) / f64::from(report.sent);
    report
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Hop {
    pub ttl: u8,
    /// The router (or the target) that answered; `null` when nothing did in time.
    pub address: Option<String>,
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TracerouteReport {
    pub target: String,
    pub hops: Vec<Hop>,
    pub reached: bool,
    pub error: Option<String>,
}

const TRACE_BASE_PORT: u16 = 33434;

/// Parses an ICMPv4 error carried in a raw-socket datagram (IP header included):
/// returns (type, the quoted datagram's destination address, its UDP destination port).
fn quoted_udp(datagram: &[u8]) -> Option<(u8, Ipv4Addr, u16)> {
    let outer = usize::from(datagram.first()? & 0x0f) * 4;
    let icmp = datagram.get(outer..)?;
    let icmp_type = *icmp.first()?;
    if icmp_type != 11 && icmp_type != 3 {
        return None;
    }
    let inner_ip = icmp.get(8..)?;
    if inner_ip.get(9) != Some(&17) {
        return None;
    }
    let inner_len = usize::from(inner_ip.first()? & 0x0f) * 4;
    let destination = Ipv4Addr::new(
        *inner_ip.get(16)?,
        *inner_ip.get(17)?,
        *inner_ip.get(18)?,
        *inner_ip.get(19)?,
    );
    let udp = inner_ip.get(inner_len..inner_len + 4)?;
    Some((icmp_type, destination, u16::from_be_bytes([udp[2], udp[3]])))
}

fn traceroute_blocking(
    target: Ipv4Addr,
    max_hops: u8,
    timeout: Duration,
) -> Result<TracerouteReport, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let icmp = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .map_err(|e| format!("raw ICMP socket: {e}"))?;
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("UDP socket: {e}"))?;
    let mut report = TracerouteReport {
        target: target.to_string(),
        hops: Vec::new(),
        reached: false,
        error: None,
    };
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    for ttl in 1..=max_hops {
        let port = TRACE_BASE_PORT + u16::from(ttl);
        udp.set_ttl(u32::from(ttl)).map_err(|e| format!("set TTL: {e}"))?;
        let started = Instant::now();
        udp.send_to(b"raven-traceroute", (target, port)).map_err(|e| format!("send: {e}"))?;
        let mut hop = Hop { ttl, address: None, rtt_ms: None };
        while let Some(left) = timeout.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) {
            let Some((bytes, from)) = super::health::recv_raw(&icmp, &mut buf, left)? else {
                break;
            };
            if let Some((icmp_type, destination, quoted_port)) = quoted_udp(&bytes)
                && destination == target
                && quoted_port == port
            {
                hop.address = from.as_socket().map(|a| a.ip().to_string());
                hop.rtt_ms = Some(ms(started.elapsed()));
                report.reached = icmp_type == 3;
                break;
            }
        }
        report.hops.push(hop);
        if report.reached {
            break;
        }
    }
    Ok(report)
}

/// Traceroute to an IPv4 `target`: at most `max_hops` (≤ 30), each waiting up to
/// `timeout` (≤ 3 s).
pub async fn traceroute(
    target: IpAddr,
    max_hops: u8,
    timeout: Duration,
) -> Result<TracerouteReport, DiagError> {
    let IpAddr::V4(target) = target else {
        return Err(DiagError::Invalid("traceroute supports IPv4 targets only".into()));
    };
    let max_hops = max_hops.clamp(1, 30);
    let timeout = timeout.clamp(Duration::from_millis(10), Duration::from_secs(3));
    let outcome =
        tokio::task::spawn_blocking(move || traceroute_blocking(target, max_hops, timeout))
            .await
            .unwrap_or_else(|e| Err(format!("traceroute task failed: {e}")));
    Ok(outcome.unwrap_or_else(|e| TracerouteReport {
        target: target.to_string(),
        hops: Vec::new(),
        reached: false,
        error: Some(e),
    }))
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TcpReport {
    pub target: String,
    pub connected: bool,
    pub elapsed_ms: f64,
    pub error: Option<String>,
}

/// One TCP connect within `timeout` (at most 10 s).
pub async fn tcp_connect(target: SocketAddr, timeout: Duration) -> TcpReport {
    let result = super::health::probe_tcp(target, timeout.min(Limits::MAX_TIMEOUT)).await;
    TcpReport {
        target: target.to_string(),
        connected: result.ok,
        elapsed_ms: result.latency_ms.unwrap_or(ms(timeout.min(Limits::MAX_TIMEOUT))),
        error: result.error,
    }
}

/// DNS record types the lookup understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    A,
    Aaaa,
    Mx,
    Cname,
}

impl RecordType {
    fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Aaaa => 28,
            RecordType::Mx => 15,
            RecordType::Cname => 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DnsAnswer {
    pub name: String,
    /// `A`, `AAAA`, `MX`, `CNAME` or `TYPE<n>`.
    pub record_type: String,
    pub ttl: u32,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DnsReport {
    pub name: String,
    pub server: String,
    pub record_type: RecordType,
    /// RCODE name: `NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...
    pub rcode: Option<String>,
    pub answers: Vec<DnsAnswer>,
    pub elapsed_ms: f64,
    pub error: Option<String>,
}

fn encode_query(id: u16, name: &str, record_type: RecordType) -> Result<Vec<u8>, DiagError> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00]); // RD
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return Err(DiagError::Invalid(format!("{name:?} is not a DNS name")));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DiagError::Invalid(format!("{name:?} has an empty or over-long label")));
        }
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&record_type.code().to_be_bytes());
    packet.extend_from_slice(&[0, 1]); // IN
    Ok(packet)
}

/// Reads a (possibly compressed) name at `offset`; returns it and the offset after it.
fn read_name(packet: &[u8], mut offset: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut end = None;
    for _ in 0..64 {
        let len = *packet.get(offset)?;
        if len == 0 {
            let after = end.unwrap_or(offset + 1);
            return Some((if labels.is_empty() { ".".into() } else { labels.join(".") }, after));
        }
        if len & 0xc0 == 0xc0 {
            let pointer = usize::from(u16::from_be_bytes([len & 0x3f, *packet.get(offset + 1)?]));
            end.get_or_insert(offset + 2);
            offset = pointer;
            continue;
        }
        let label = packet.get(offset + 1..offset + 1 + usize::from(len))?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        offset += 1 + usize::from(len);
    }
    None // a compression loop
}

fn be16(packet: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*packet.get(offset)?, *packet.get(offset + 1)?]))
}

/// Decodes a response to query `id`: (rcode, answers).
fn decode_response(packet: &[u8], id: u16) -> Result<(String, Vec<DnsAnswer>), String> {
    if packet.len() < 12 || be16(packet, 0) != Some(id) {
        return Err("not a response to our query".into());
    }
    if packet[2] & 0x80 == 0 {
        return Err("not a response (QR bit clear)".into());
    }
    let rcode = match packet[3] & 0x0f {
        0 => "NOERROR".to_string(),
        1 => "FORMERR".to_string(),
        2 => "SERVFAIL".to_string(),
        3 => "NXDOMAIN".to_string(),
        4 => "NOTIMP".to_string(),
        5 => "REFUSED".to_string(),
        n => format!("RCODE{n}"),
    };
    let questions = be16(packet, 4).unwrap_or(0);
    let answer_count = be16(packet, 6).unwrap_or(0);
    let mut offset = 12;
    for _ in 0..questions {
        let (_, after) = read_name(packet, offset).ok_or("truncated question")?;
        offset = after + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..answer_count.min(Limits::MAX_DNS_ANSWERS as u16) {
        let (name, after) = read_name(packet, offset).ok_or("truncated answer name")?;
        let rtype = be16(packet, after).ok_or("truncated answer")?;
        let ttl = u32::from_be_bytes(
            packet
                .get(after + 4..after + 8)
                .ok_or("truncated answer")?
                .try_into()
                .unwrap_or([0; 4]),
        );
        let rdlen = usize::from(be16(packet, after + 8).ok_or("truncated answer")?);
        let rdata_at = after + 10;
        let rdata = packet.get(rdata_at..rdata_at + rdlen).ok_or("truncated rdata")?;
        let (record_type, data) = match rtype {
            1 if rdlen == 4 => {
                ("A".to_string(), Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string())
            }
            28 if rdlen == 16 => {
                let bytes: [u8; 16] = rdata.try_into().unwrap_or([0; 16]);
                ("AAAA".to_string(), Ipv6Addr::from(bytes).to_string())
            }
            5 => (
                "CNAME".to_string(),
                read_name(packet, rdata_at).map(|(n, _)| n).ok_or("bad CNAME")?,
            ),
            15 if rdlen >= 3 => {
                let preference = be16(packet, rdata_at).unwrap_or(0);
                let exchange = read_name(packet, rdata_at + 2).map(|(n, _)| n).ok_or("bad MX")?;
                ("MX".to_string(), format!("{preference} {exchange}"))
            }
            other => (format!("TYPE{other}"), format!("{rdlen} bytes")),
        };
        answers.push(DnsAnswer { name, record_type, ttl, data });
        offset = rdata_at + rdlen;
    }
    Ok((rcode, answers))
}

/// One query for `name`/`record_type` to `server` within `timeout` (at most 10 s).
pub async fn dns_lookup(
    server: SocketAddr,
    name: &str,
    record_type: RecordType,
    timeout: Duration,
) -> Result<DnsReport, DiagError> {
    let timeout = timeout.min(Limits::MAX_TIMEOUT);
    let id = fastrand::u16(..);
    let query = encode_query(id, name, record_type)?;
    let mut report = DnsReport {
        name: name.to_string(),
        server: server.to_string(),
        record_type,
        rcode: None,
        answers: Vec::new(),
        elapsed_ms: 0.0,
        error: None,
    };
    let started = Instant::now();
    let exchange = async {
        let bind: SocketAddr =
            if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| format!("bind: {e}"))?;
        socket.connect(server).await.map_err(|e| format!("connect: {e}"))?;
        socket.send(&query).await.map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; 4096];
        loop {
            let len = socket.recv(&mut buf).await.map_err(|e| format!("receive: {e}"))?;
            // Ignore stray datagrams; wait for the answer to our id.
            if let Ok(decoded) = decode_response(&buf[..len], id) {
                return Ok::<_, String>(decoded);
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((rcode, answers))) => {
            report.rcode = Some(rcode);
            report.answers = answers;
        }
        Ok(Err(e)) => report.error = Some(e),
        Err(_) => report.error = Some(format!("no answer within {} ms", timeout.as_millis())),
    }
    report.elapsed_ms = ms(started.elapsed());
    Ok(report)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HttpReport {
    pub url: String,
    pub status: Option<u16>,
    /// Body bytes received (headers excluded).
    pub bytes: u64,
    pub elapsed_ms: f64,
    pub time_to_first_byte_ms: Option<f64>,
    pub bits_per_second: f64,
    /// True when the transfer was cut at the size or time limit.
    pub truncated: bool,
    pub error: Option<String>,
}

/// `GET url` (plain `http://HOST:PORT/path`, HOST an IP address), counting at most
/// `max_bytes` (≤ 100 MiB) for at most `max_time` (≤ 30 s).
pub async fn http_download(
    url: &str,
    max_bytes: u64,
    max_time: Duration,
) -> Result<HttpReport, DiagError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| DiagError::Invalid("only http:// URLs are supported".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let address: SocketAddr = authority
        .parse()
        .or_else(|_| authority.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 80)))
        .map_err(|_| DiagError::Invalid(format!("{authority:?} is not IP:PORT")))?;
    let max_bytes = max_bytes.min(Limits::MAX_DOWNLOAD_BYTES);
    let max_time = max_time.min(Limits::MAX_DOWNLOAD_TIME);
    let mut report = HttpReport {
        url: url.to_string(),
        status: None,
        bytes: 0,
        elapsed_ms: 0.0,
        time_to_first_byte_ms: None,
        bits_per_second: 0.0,
        truncated: false,
        error: None,
    };
    let started = Instant::now();
    let transfer = async {
        let mut stream =
            tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: raven-agent\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut header = Vec::new();
        loop {
            let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Ok::<_, String>(());
            }
            if report.time_to_first_byte_ms.is_none() {
                report.time_to_first_byte_ms = Some(ms(started.elapsed()));
            }
            let mut body = &buf[..n];
            if report.status.is_none() {
                header.extend_from_slice(body);
                let Some(end) = header.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if header.len() > 16 * 1024 {
                        return Err("response header over 16 KiB".into());
                    }
                    continue;
                };
                let status_line = String::from_utf8_lossy(&header[..end])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                report.status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
                if report.status.is_none() {
                    return Err(format!("not an HTTP response: {status_line:?}"));
                }
                let body_len = header.len() - end - 4;
                report.bytes += body_len as u64;
                body = &[];
            }
            report.bytes += body.len() as u64;
            if report.bytes >= max_bytes {
                report.truncated = true;
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(max_time, transfer).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.error = Some(e),
        Err(_) => report.truncated = true,
    }
    let elapsed = started.elapsed();
    report.elapsed_ms = ms(elapsed);
    report.bits_per_second = report.bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-6);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_query() {
        let query = encode_query(0x1234, "noc.example.net.", RecordType::Mx).unwrap();
        assert_eq!(&query[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&query[12..], b"\x03noc\x07example\x03net\x00\x00\x0f\x00\x01");
        assert!(encode_query(1, "a..b", RecordType::A).is_err());
        assert!(encode_query(1, "", RecordType::A).is_err());
    }

    /// A response as a resolver sends it: CNAME then A, with name compression.
    #[test]
    fn decodes_compressed_answers() {
        let mut response = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0];
        response.extend_from_slice(b"\x03www\x07example\x03net\x00\x00\x01\x00\x01");
        // www.example.net CNAME noc.example.net (pointer to "example.net" at offset 16)
        response.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0x0e, 0x10, 0, 6]);
        response.extend_from_slice(b"\x03noc\xc0\x10");
        let noc_at = response.len() - 6;
        // noc.example.net A 192.0.2.7
        response.extend_from_slice(&[
            0xc0,
            noc_at as u8,
            0,
            1,
            0,
            1,
            0,
            0,
            0,
            60,
            0,
            4,
            192,
            0,
            2,
            7,
        ]);
        // example.net MX 10 noc.example.net
        response.extend_from_slice(&[
            0xc0,
            16,
            0,
            15,
            0,
            1,
            0,
            0,
            0,
            60,
            0,
            4,
            0,
            10,
            0xc0,
            noc_at as u8,
        ]);
        let (rcode, answers) = decode_response(&response, 0x1234).unwrap();
        assert_eq!(rcode, "NOERROR");
        assert_eq!(
            answers,
            vec![
                DnsAnswer {
                    name: "www.example.net".into(),
                    record_type: "CNAME".into(),
                    ttl: 3600,
                    data: "noc.example.net".into()
                },
                DnsAnswer {
                    name: "noc.example.net".into(),
                    record_type: "A".into(),
                    ttl: 60,
                    data: "192.0.2.7".into()
                },
                DnsAnswer {
                    name: "example.net".into(),
                    record_type: "MX".into(),
                    ttl: 60,
                    data: "10 noc.example.net".into()
                },
            ]
        );
        assert!(decode_response(&response, 0x9999).is_err(), "another query's id");
        assert!(decode_response(&response[..40], 0x1234).is_err(), "truncated");
        let mut looped = response.clone();
        looped[12] = 0xc0;
        looped[13] = 12;
        assert!(decode_response(&looped, 0x1234).is_err(), "a compression loop is refused");
    }

    #[test]
    fn parses_a_quoted_udp_datagram() {
        // IPv4 header (20) + ICMP time exceeded (8) + quoted IPv4 header (20) + UDP (8).
        let mut datagram = vec![0x45; 1];
        datagram.extend_from_slice(&[0; 19]);
        datagram.extend_from_slice(&[11, 0, 0, 0, 0, 0, 0, 0]);
        let mut inner = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 1, 17, 0, 0, 198, 19, 0, 2, 192, 0, 2, 1];
        inner.extend_from_slice(&[0x9c, 0x40, 0x82, 0x9b, 0, 8, 0, 0]);
        datagram.extend_from_slice(&inner);
        assert_eq!(quoted_udp(&datagram), Some((11, Ipv4Addr::new(192, 0, 2, 1), 33435)));
        datagram[20] = 0; // an echo reply quotes nothing
        assert_eq!(quoted_udp(&datagram), None);
        assert_eq!(quoted_udp(&datagram[..30]), None);
    }

    #[tokio::test]
    async fn dns_lookup_times_out_without_a_server() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let report = dns_lookup(
            silent.local_addr().unwrap(),
            "example.net",
            RecordType::A,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(report.error.unwrap().contains("no answer"));
    }

    #[tokio::test]
    async fn http_download_counts_the_body_and_honours_the_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = socket.read(&mut request).await;
                    let body = vec![b'x'; 300_000];
                    let header =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = socket.write_all(header.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        let url = format!("http://{address}/file");
        let report = http_download(&url, u64::MAX, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (report.status, report.bytes, report.truncated),
            (Some(200), 300_000, false),
            "{report:?}"
        );
        assert!(report.bits_per_second > 0.0);
        let limited = http_download(&url, 1000, Duration::from_secs(5)).await.unwrap();
        assert!(limited.truncated && limited.bytes >= 1000, "{limited:?}");
        assert!(http_download("https://x/", 1, Duration::from_secs(1)).await.is_err());
        assert!(http_download("http://name.example/", 1, Duration::from_secs(1)).await.is_err());
    }
}
