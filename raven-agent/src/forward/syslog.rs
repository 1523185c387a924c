//! Syslog sink: TCP (RFC 6587), TLS (RFC 5425) and UDP (RFC 5426).
//!
//! Invariants:
//! - The message is the stored payload, byte for byte, unless
//!   `add_record_id` is set; then an RFC 5424 message gets one structured
//!   data element `[SD-ID id="<appliance>:<stream>:<seq>"]` as its first
//!   element (replacing the NILVALUE `-`), and every other byte stays as it
//!   was. RFC 3164 (BSD) messages have no structured data and are sent
//!   unchanged (counted as `sd_not_applicable`).
//! - Framing: octet counting `LEN SP MSG` (any content is safe), or `MSG LF`
//!   where trailing CR/LF of the message are dropped first (an LF inside a
//!   message would split it at the receiver; use octet counting).
//! - TCP/TLS acknowledgement: a batch is acknowledged when (1) all of its
//!   bytes were written, (2) the kernel's send queue drained
//!   (`ioctl(SIOCOUTQ) == 0`: the peer's TCP stack ACKed every byte), and
//!   (3) the connection was still established `ack_confirm_ms` later (a
//!   receiver that dies with unread data resets the connection, which shows
//!   here). Any failure acknowledges nothing of the batch: the forwarder
//!   re-sends it on a new connection, so at most the one in-flight batch can
//!   arrive twice.
//! - UDP acknowledgement: each datagram the kernel accepted is acknowledged
//!   (fire and forget; a pending ICMP "port unreachable" fails the next
//!   batch and the probe).

use std::{
    os::fd::{AsRawFd, RawFd},
    path::Path,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket},
};
use tokio_rustls::{TlsConnector, client::TlsStream, rustls};

use super::{Delivered, Outgoing, SinkError, SinkFailure, resolve};
use crate::config::{SinkConfig, SinkProtocol, SyslogFraming};

enum Connection {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection {
    fn fd(&self) -> RawFd {
        match self {
            Connection::Tcp(s) => s.as_raw_fd(),
            Connection::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Connection::Tcp(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Connection::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }
}

/// Bytes written but not yet ACKed by the peer (`SIOCOUTQ`).
pub(crate) fn unacknowledged_bytes(fd: RawFd) -> std::io::Result<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one int through a valid pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(queued.max(0) as u64) }
}

/// Whether the TCP connection is still ESTABLISHED (no FIN or RST from the
/// peer), from `TCP_INFO`.
pub(crate) fn established(fd: RawFd) -> bool {
    const TCP_ESTABLISHED: u8 = 1;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    };
    rc == 0 && len > 0 && info[0] == TCP_ESTABLISHED
}

/// Connects with a timeout to the first address of `endpoint`.
pub(crate) async fn tcp_connect(endpoint: &str, timeout: Duration) -> Result<TcpStream, SinkError> {
    let addr = resolve(endpoint).await?;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| SinkError::ConnectTimeout { endpoint: endpoint.to_string() })?
        .map_err(|source| SinkError::Connect { endpoint: endpoint.to_string(), source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A TLS client for the configured CA and optional client certificate.
pub(crate) fn tls_connector(config: &SinkConfig) -> Result<TlsConnector, SinkError> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let tls = |e: String| SinkError::Tls(e);
    let ca = Path::new(&config.ca_file);
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).map_err(|e| tls(format!("{}: {e}", ca.display())))?
    {
        let cert = cert.map_err(|e| tls(format!("{}: {e}", ca.display())))?;
        roots.add(cert).map_err(|e| tls(format!("{}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
    let client = if config.cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let cert = Path::new(&config.cert_file);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect())
            .map_err(|e| tls(format!("{}: {e}", cert.display())))?;
        let key = Path::new(&config.key_file);
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls(format!("{}: {e}", key.display())))?;
        builder.with_client_auth_cert(chain, key).map_err(|e| tls(e.to_string()))?
    };
    Ok(TlsConnector::from(Arc::new(client)))
}

pub(crate) fn server_name(
    config: &SinkConfig,
) -> Result<rustls_pki_types::ServerName<'static>, SinkError> {
    let name = if config.server_name.is_empty() {
        config.endpoint_host()
    } else {
        config.server_name.clone()
    };
    rustls_pki_types::ServerName::try_from(name.clone())
        .map_err(|e| SinkError::Tls(format!("server name {name:?}: {e}")))
}

enum Transport {
    Tcp,
    Tls { connector: TlsConnector, server_name: rustls_pki_types::ServerName<'static> },
    Udp,
}

pub struct SyslogSink {
    endpoint: String,
    transport: Transport,
    framing: SyslogFraming,
    /// SD-ID when the record id is added.
    sd_id: Option<String>,
    connect_timeout: Duration,
    ack_timeout: Duration,
    ack_confirm: Duration,
    connection: Option<Connection>,
    udp: Option<UdpSocket>,
    /// RFC 3164 messages that could not carry the record id.
    sd_not_applicable: u64,
    /// A send was interrupted (its future dropped) after it began writing:
    /// the stream may end in a partial frame, so it must not be reused.
    interrupted: bool,
}

impl SyslogSink {
    pub fn from_config(config: &SinkConfig) -> Result<SyslogSink, SinkError> {
        let transport = match config.protocol {
            SinkProtocol::SyslogTls => Transport::Tls {
                connector: tls_connector(config)?,
                server_name: server_name(config)?,
            },
            SinkProtocol::SyslogUdp => Transport::Udp,
            _ => Transport::Tcp,
        };
        Ok(SyslogSink {
            endpoint: config.endpoint.clone(),
            transport,
            framing: config.framing,
            sd_id: config.add_record_id.then(|| config.sd_id.clone()),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
            ack_confirm: Duration::from_millis(config.ack_confirm_ms),
            connection: None,
            udp: None,
            sd_not_applicable: 0,
            interrupted: false,
        })
    }

    /// RFC 3164 messages sent without the record id so far.
    pub fn sd_not_applicable(&self) -> u64 {
        self.sd_not_applicable
    }

    pub fn reset(&mut self) {
        self.connection = None;
        self.udp = None;
    }

    /// The message as it goes upstream (record id inserted when enabled).
    fn message(&mut self, record: &Outgoing) -> Vec<u8> {
        if let Some(sd_id) = &self.sd_id {
            match with_record_id(&record.payload, sd_id, &record.id.to_string()) {
                Some(rewritten) => return rewritten,
                None => self.sd_not_applicable += 1,
            }
        }
        record.payload.to_vec()
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        if std::mem::take(&mut self.interrupted) {
            self.connection = None;
        }
        if let Some(c) = &self.connection {
            if established(c.fd()) {
                return Ok(());
            }
            self.connection = None;
        }
        let tcp = tcp_connect(&self.endpoint, self.connect_timeout).await?;
        let connection = match &self.transport {
            Transport::Tls { connector, server_name } => {
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(server_name.clone(), tcp),
                )
                .await
                .map_err(|_| SinkError::ConnectTimeout { endpoint: self.endpoint.clone() })?
                .map_err(|e| SinkError::Tls(e.to_string()))?;
                Connection::Tls(Box::new(tls))
            }
            _ => Connection::Tcp(tcp),
        };
        self.connection = Some(connection);
        Ok(())
    }

    async fn udp_socket(&mut self) -> Result<&UdpSocket, SinkError> {
        super::connected_udp(&mut self.udp, &self.endpoint).await
    }

    pub async fn probe(&mut self) -> Result<(), SinkError> {
        match self.transport {
            Transport::Udp => self.udp_socket().await.map(|_| ()),
            _ => self.connect().await,
        }
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<Delivered, SinkFailure> {
        match self.transport {
            Transport::Udp => self.send_udp(batch).await,
            _ => self.send_stream(batch).await,
        }
    }

    async fn send_udp(&mut self, batch: &[Outgoing]) -> Result<Delivered, SinkFailure> {
        let messages: Vec<Vec<u8>> = batch.iter().map(|r| self.message(r)).collect();
        let socket = self.udp_socket().await.map_err(SinkFailure::none_acknowledged)?;
        let mut delivered = Delivered::default();
        for message in &messages {
            match socket.send(message).await {
                Ok(n) => delivered.bytes += n as u64,
                // Larger than a datagram can be: it can never go this way.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => delivered.skipped += 1,
                Err(e) => {
                    return Err(SinkFailure {
                        acknowledged: delivered.acknowledged,
                        error: SinkError::Write(e),
                    });
                }
            }
            delivered.acknowledged += 1;
        }
        Ok(delivered)
    }

    async fn send_stream(&mut self, batch: &[Outgoing]) -> Result<Delivered, SinkFailure> {
        let mut wire = Vec::with_capacity(batch.iter().map(|r| r.payload.len() + 8).sum());
        for record in batch {
            let message = self.message(record);
            frame(self.framing, &message, &mut wire);
        }
        self.connect().await.map_err(SinkFailure::none_acknowledged)?;
        self.interrupted = true;
        let result = self.write_and_confirm(&wire).await;
        self.interrupted = false;
        if result.is_err() {
            // Never write the retry behind a possibly cut frame.
            self.connection = None;
        }
        result.map_err(SinkFailure::none_acknowledged)?;
        Ok(Delivered { acknowledged: batch.len(), bytes: wire.len() as u64, skipped: 0 })
    }

    /// Writes the framed batch and waits for the acknowledgement
    /// (send queue drained, connection still established after the confirm
    /// delay).
    async fn write_and_confirm(&mut self, wire: &[u8]) -> Result<(), SinkError> {
        let connection = self.connection.as_mut().expect("connected");
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let written = tokio::time::timeout_at(deadline, connection.write_all(wire)).await;
        match written {
            Err(_) => {
                let left = unacknowledged_bytes(connection.fd()).unwrap_or(wire.len() as u64);
                return Err(SinkError::AckTimeout { unacknowledged_bytes: left });
            }
            Ok(Err(e)) => return Err(SinkError::Write(e)),
            Ok(Ok(())) => {}
        }
        let fd = connection.fd();
        wait_acknowledged(fd, deadline).await?;
        tokio::time::sleep(self.ack_confirm).await;
        if !established(fd) {
            return Err(SinkError::ConnectionLost);
        }
        Ok(())
    }
}

/// Polls until the peer ACKed every byte written on `fd`.
async fn wait_acknowledged(fd: RawFd, deadline: tokio::time::Instant) -> Result<(), SinkError> {
    let mut pause = Duration::from_micros(200);
    loop {
        if !established(fd) {
            return Err(SinkError::ConnectionLost);
        }
        let left = unacknowledged_bytes(fd).map_err(SinkError::Write)?;
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SinkError::AckTimeout { unacknowledged_bytes: left });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Appends one framed message.
pub fn frame(framing: SyslogFraming, message: &[u8], out: &mut Vec<u8>) {
    match framing {
        SyslogFraming::OctetCounting => {
            out.extend_from_slice(message.len().to_string().as_bytes());
            out.push(b' ');
            out.extend_from_slice(message);
        }
        SyslogFraming::Lf => {
            let end =
                message.iter().rposition(|b| !matches!(b, b'\n' | b'\r')).map_or(0, |i| i + 1);
            out.extend_from_slice(&message[..end]);
            out.push(b'\n');
        }
    }
}

/// Escapes a PARAM-VALUE (RFC 5424 6.3.3: `"`, `\` and `]`).
fn escape_param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The RFC 5424 message with `[SD_ID id="ID"]` as its first SD element;
/// `None` when `message` is not RFC 5424 (then it goes unchanged).
pub fn with_record_id(message: &[u8], sd_id: &str, id: &str) -> Option<Vec<u8>> {
    // <PRI>: '<' 1-3 digits '>'
    let close = message.iter().take(5).position(|&b| b == b'>')?;
    if message.first() != Some(&b'<')
        || close < 2
        || !message[1..close].iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    // VERSION SP: RFC 5424 has a non-zero version digit right after PRI.
    let mut at = close + 1;
    let version_end = at + message[at..].iter().take(3).position(|&b| b == b' ')?;
    if version_end == at
        || !message[at..version_end].iter().all(u8::is_ascii_digit)
        || message[at] == b'0'
    {
        return None;
    }
    at = version_end + 1;
    // TIMESTAMP HOSTNAME APP-NAME PROCID MSGID, each followed by SP.
    for _ in 0..5 {
        let len = message[at..].iter().position(|&b| b == b' ')?;
        if len == 0 {
            return None;
        }
        at += len + 1;
    }
    let element = format!("[{sd_id} id=\"{}\"]", escape_param(id));
    let rest = &message[at..];
    let mut out = Vec::with_capacity(message.len() + element.len());
    out.extend_from_slice(&message[..at]);
    out.extend_from_slice(element.as_bytes());
    if rest.first() == Some(&b'-') && matches!(rest.get(1), None | Some(b' ')) {
        out.extend_from_slice(&rest[1..]);
    } else if rest.first() == Some(&b'[') {
        out.extend_from_slice(rest);
    } else {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_counting_and_lf_framing() {
        let mut out = Vec::new();
        frame(SyslogFraming::OctetCounting, b"<13>1 - - - - - - hi\n", &mut out);
        assert_eq!(out, b"21 <13>1 - - - - - - hi\n");
        out.clear();
        frame(SyslogFraming::Lf, b"<13>hello\r\n", &mut out);
        frame(SyslogFraming::Lf, b"<13>again", &mut out);
        assert_eq!(out, b"<13>hello\n<13>again\n");
    }

    #[test]
    fn record_id_replaces_the_nil_structured_data() {
        let msg = b"<165>1 2003-10-11T22:14:15.003Z host app 123 ID47 - BOM hello";
        let out = with_record_id(msg, "raven@32473", "venue:syslog:7").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<165>1 2003-10-11T22:14:15.003Z host app 123 ID47 [raven@32473 id=\"venue:syslog:7\"] BOM hello"
        );
        // NILVALUE at the very end (no MSG).
        let out = with_record_id(b"<13>1 - h a - - -", "x@1", "a:syslog:1").unwrap();
        assert_eq!(out, b"<13>1 - h a - - [x@1 id=\"a:syslog:1\"]");
    }

    #[test]
    fn record_id_goes_before_existing_elements_and_is_escaped() {
        let msg =
            br#"<165>1 2003-10-11T22:14:15.003Z host app - - [exampleSDID@32473 iut="3"] msg"#;
        let out = with_record_id(msg, "raven@32473", r#"a"b]\:syslog:1"#).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"<165>1 2003-10-11T22:14:15.003Z host app - - [raven@32473 id="a\"b\]\\:syslog:1"][exampleSDID@32473 iut="3"] msg"#
        );
    }

    #[test]
    fn rfc3164_and_garbage_are_left_alone() {
        for msg in [
            &b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed"[..],
            b"<189>123: *Mar  1 00:00:00: %SYS-5-CONFIG_I: Configured",
            b"no pri at all",
            b"<13>1 too short",
            b"",
            b"<999999>1 a b c d e -",
        ] {
            assert_eq!(with_record_id(msg, "raven@32473", "a:syslog:1"), None, "{msg:?}");
        }
    }
}
