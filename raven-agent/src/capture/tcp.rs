//! Syslog over TCP (RFC 6587) and TLS (RFC 5425) inputs, feeding the same
//! pipeline as the UDP capture.
//!
//! Invariants:
//! - Framing is detected per message, as rsyslog does: a message that
//!   starts with a digit is octet-counted (`LEN SP MSG`), anything else is
//!   LF-terminated (non-transparent framing). The record holds the message
//!   without its length prefix or trailing LF.
//! - A message longer than `max_message_bytes` is kept, cut at that length
//!   and flagged truncated (its wire length is kept); the rest of it is
//!   skipped up to the next frame. Oversize input never grows memory.
//! - At most `max_connections` connections per listener; further ones are
//!   closed at once and counted.
//! - Back-pressure: when the pipeline is slow the connection is not read,
//!   and TCP flow control slows the sender. Nothing read is dropped.
//! - A connection that closes mid-frame keeps the partial message as a
//!   truncated record: bytes that reached Raven are never discarded.

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, rustls};
use tokio_util::{codec::FramedRead, sync::CancellationToken};

use crate::{
    metrics::{self, CapturedBatch, TcpConnectionRefused},
    record::{Batch, Record, Stream, Via},
};

/// One framed message: its bytes (cut at the limit) and its full length.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub message: Bytes,
    pub wire_len: usize,
}

/// RFC 6587 framing, octet counting or LF, detected per message.
pub struct SyslogFraming {
    max: usize,
    /// Bytes of an oversize message still to skip (octet counting), or
    /// `usize::MAX` to skip up to the next LF.
    skipping: Option<(usize, Frame)>,
}

impl SyslogFraming {
    pub fn new(max_message_bytes: usize) -> SyslogFraming {
        SyslogFraming { max: max_message_bytes, skipping: None }
    }

    fn cut(&self, message: &[u8], wire_len: usize) -> Frame {
        Frame { message: Bytes::copy_from_slice(&message[..message.len().min(self.max)]), wire_len }
    }
}

/// Longest decimal length prefix accepted ("99999999 " is ~95 MiB).
const MAX_PREFIX_DIGITS: usize = 8;

impl tokio_util::codec::Decoder for SyslogFraming {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        if let Some((left, mut frame)) = self.skipping.take() {
            if left == usize::MAX {
                match buf.iter().position(|&b| b == b'\n') {
                    Some(lf) => {
                        frame.wire_len += lf;
                        buf.advance(lf + 1);
                        return Ok(Some(frame));
                    }
                    None => {
                        frame.wire_len += buf.len();
                        buf.clear();
                        self.skipping = Some((usize::MAX, frame));
                        return Ok(None);
                    }
                }
            }
            let take = left.min(buf.len());
            buf.advance(take);
            if take == left {
                return Ok(Some(frame));
            }
            self.skipping = Some((left - take, frame));
            return Ok(None);
        }
        // Senders that octet-count often still end each frame with LF (or
        // CRLF); a blank line between frames carries no message.
        let blank = buf.iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
        buf.advance(blank);
        let Some(&first) = buf.first() else { return Ok(None) };
        if first.is_ascii_digit() {
            let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits < buf.len() && buf[digits] == b' ' && digits <= MAX_PREFIX_DIGITS {
                let len: usize = std::str::from_utf8(&buf[..digits]).unwrap().parse().unwrap();
                let start = digits + 1;
                if buf.len() >= start + len {
                    let frame = self.cut(&buf[start..start + len], len);
                    buf.advance(start + len);
                    return Ok(Some(frame));
                }
                if len > self.max && buf.len() >= start + self.max {
                    let frame = self.cut(&buf[start..], len);
                    let have = buf.len() - start;
                    buf.clear();
                    self.skipping = Some((len - have, frame));
                    return Ok(None);
                }
                return Ok(None);
            }
            if digits == buf.len() && digits <= MAX_PREFIX_DIGITS {
                return Ok(None); // the prefix is still arriving
            }
            // Not a length prefix after all: an LF-framed message.
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let end = if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
                let frame = self.cut(&buf[..end], end);
                buf.advance(lf + 1);
                Ok(Some(frame))
            }
            None if buf.len() > self.max => {
                let frame = self.cut(buf, buf.len());
                buf.clear();
                self.skipping = Some((usize::MAX, frame));
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if let Some((_, frame)) = self.skipping.take() {
            return Ok(Some(frame));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        // A last message without its LF (or cut short): keep what came.
        let frame = self.cut(buf, buf.len());
        buf.clear();
        Ok(Some(frame))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TcpInputSpec {
    pub port: u16,
    pub via: Via,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub batch_max: usize,
}

/// Loads a server certificate chain and key (PEM), and, when `client_ca`
/// is given, requires client certificates signed by it.
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                roots
                    .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
                    .map_err(|e| e.to_string())?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `cancel` fires.
pub async fn run(
    listener: TcpListener,
    spec: TcpInputSpec,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<Batch>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(spec.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(port = spec.port, error = %e, "accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::emit(TcpConnectionRefused {
                port: spec.port,
                exporter: peer,
                reason: "connection_limit",
            });
            continue; // dropping the stream closes it
        };
        let (tx, cancel, tls) = (tx.clone(), cancel.clone(), tls.clone());
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve(stream, peer, spec, tx, cancel).await,
                    Err(e) => {
                        tracing::warn!(port = spec.port, %peer, error = %e, "TLS handshake failed");
                        metrics::emit(TcpConnectionRefused {
                            port: spec.port,
                            exporter: peer,
                            reason: "tls_handshake",
                        });
                        Ok(())
                    }
                },
                None => serve(stream, peer, spec, tx, cancel).await,
            };
            if let Err(e) = result {
                tracing::debug!(port = spec.port, %peer, error = %e, "syslog connection ended");
            }
            drop(slot);
        });
    }
}

async fn serve(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    peer: SocketAddr,
    spec: TcpInputSpec,
    tx: mpsc::Sender<Batch>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let peer = super::socket::unmap_v4(peer);
    let mut frames = FramedRead::new(stream, SyslogFraming::new(spec.max_message_bytes));
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            frame = frames.next() => frame,
        };
        let Some(first) = first else { return Ok(()) };
        let mut frames_now = vec![first?];
        // Take what is already buffered without waiting, up to a batch. A
        // read error ends the connection only after what was framed is sent on.
        let mut ended = Ok(());
        while frames_now.len() < spec.batch_max {
            match futures_util::FutureExt::now_or_never(frames.next()) {
                Some(Some(Ok(frame))) => frames_now.push(frame),
                Some(Some(Err(e))) => {
                    ended = Err(e);
                    break;
                }
                _ => break,
            }
        }
        let now = SystemTime::now();
        let mut counts = CapturedBatch::new(spec.via);
        let batch: Batch = frames_now
            .into_iter()
            .map(|frame| {
                let truncated = frame.message.len() < frame.wire_len;
                counts.add(Stream::Syslog, frame.wire_len as u32, truncated);
                Record {
                    captured_at: now,
                    stream: Stream::Syslog,
                    src: peer,
                    dst_port: spec.port,
                    ifindex: 0,
                    wire_len: frame.wire_len as u32,
                    truncated,
                    via: spec.via,
                    payload: frame.message,
                }
            })
            .collect();
        metrics::emit(counts);
        if !super::ring::forward(&tx, vec![batch]).await {
            return Ok(());
        }
        ended?;
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Decoder;

    use super::*;

    fn decode_all(input: &[u8], max: usize, chunk: usize) -> Vec<(Vec<u8>, usize)> {
        let mut codec = SyslogFraming::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push((f.message.to_vec(), f.wire_len));
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
            out.push((f.message.to_vec(), f.wire_len));
        }
        out
    }

    #[test]
    fn octet_counting_and_lf_framing_mix_in_any_chunking() {
        let input = b"11 <14>a b\nc d<13>plain line\r\n5 <1>xy<2>last without lf";
        let want = vec![
            (b"<14>a b\nc d".to_vec(), 11),
            (b"<13>plain line".to_vec(), 14),
            (b"<1>xy".to_vec(), 5),
            (b"<2>last without lf".to_vec(), 18),
        ];
        for chunk in 1..input.len() {
            assert_eq!(decode_all(input, 1024, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn oversize_messages_are_cut_kept_and_resynchronised() {
        let mut input = b"19 <1>0123456789abcdef".to_vec();
        input.extend_from_slice(b"<2>this lf line is long\n<3>ok\n");
        for chunk in [1, 3, 7, 100] {
            let got = decode_all(&input, 8, chunk);
            assert_eq!(
                got,
                vec![
                    (b"<1>01234".to_vec(), 19),
                    (b"<2>this ".to_vec(), 23),
                    (b"<3>ok".to_vec(), 5),
                ],
                "chunk {chunk}"
            );
        }
    }

    proptest::proptest! {
        /// Octet-counted messages come back whole however the stream is cut.
        #[test]
        fn octet_counted_messages_survive_any_chunking(
            messages in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 1..20),
            chunk in 1usize..64,
        ) {
            let mut input = Vec::new();
            for m in &messages {
                input.extend_from_slice(format!("{} ", m.len()).as_bytes());
                input.extend_from_slice(m);
            }
            let got = decode_all(&input, 4096, chunk);
            let want: Vec<_> = messages.iter().map(|m| (m.clone(), m.len())).collect();
            proptest::prop_assert_eq!(got, want);
        }

        /// Arbitrary bytes never panic, and no frame exceeds the limit.
        #[test]
        fn arbitrary_bytes_are_framed_within_the_limit(
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..4000),
            chunk in 1usize..128,
        ) {
            for (message, _) in decode_all(&input, 480, chunk) {
                proptest::prop_assert!(message.len() <= 480);
            }
        }
    }

    #[test]
    fn line_ends_after_octet_counted_frames_and_blank_lines_are_not_messages() {
        let input = b"5 <1>ab\n\r\n\n<2>cd\n6 <3>efg\r\n";
        let want = vec![(b"<1>ab".to_vec(), 5), (b"<2>cd".to_vec(), 5), (b"<3>efg".to_vec(), 6)];
        for chunk in 1..input.len() {
            assert_eq!(decode_all(input, 1024, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn a_line_starting_with_digits_but_no_length_is_lf_framed() {
        assert_eq!(
            decode_all(b"2024-01-01 boot\n", 100, 4),
            vec![(b"2024-01-01 boot".to_vec(), 15)]
        );
        assert_eq!(decode_all(b"123456789012 x\n", 100, 4), vec![(b"123456789012 x".to_vec(), 14)]);
    }
}
