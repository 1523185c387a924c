//! HTTP sink: a batch is one `POST` of gzip-compressed JSON lines.
//!
//! Invariants:
//! - One line per record, in batch order: the decoded fields (when the
//!   decoder produced a JSON object) plus `raven_id`
//!   (`<appliance>:<stream>:<seq>`), `stream`, `src` (`ADDR:PORT`),
//!   `dst_port`, `ts` (capture time, RFC 3339 UTC) and, for records without
//!   decoded fields, `payload` (the raw bytes, base64). Raven's keys win over
//!   decoded keys of the same name.
//! - Headers: `Content-Type: application/x-ndjson`, `Content-Encoding: gzip`,
//!   `X-Raven-First-Id` / `X-Raven-Last-Id`.
//! - Acknowledged: the whole batch, when the server answered 2xx. Any other
//!   status, a timeout or a broken connection acknowledges nothing; the
//!   forwarder re-posts the batch, so a server that stored a batch but whose
//!   2xx was lost gets it again (de-duplicate on `raven_id`).
//! - One HTTP/1.1 connection per sink (hyper's client), kept alive and
//!   re-made after any failure; `https://` uses rustls with the configured CA.

use std::{io::Write, time::Duration};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_rustls::TlsConnector;

use super::{
    Delivered, Outgoing, SinkError, SinkFailure,
    syslog::{server_name, tcp_connect, tls_connector},
};
use crate::config::{ForwardConfig, SinkConfig};

/// The JSON line of one record (without the newline).
pub fn json_line(record: &Outgoing) -> Vec<u8> {
    let mut fields = record
        .decoded
        .as_ref()
        .and_then(|d| serde_json::from_slice::<Value>(d).ok())
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default();
    let decoded = !fields.is_empty();
    // Out-of-range times (never from a real capture) give "" rather than a panic.
    let nanos = match record.captured_at.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    fields.insert("raven_id".into(), record.id.to_string().into());
    fields.insert("stream".into(), record.id.stream.name().into());
    fields.insert("src".into(), record.src.to_string().into());
    fields.insert("dst_port".into(), record.dst_port.into());
    fields.insert("ts".into(), ts.into());
    if !decoded {
        let payload = base64::engine::general_purpose::STANDARD.encode(&record.payload);
        fields.insert("payload".into(), payload.into());
    }
    serde_json::to_vec(&Value::Object(fields)).expect("a JSON map always serializes")
}

/// The gzip body of a batch.
pub fn gzip_body(batch: &[Outgoing]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for record in batch {
        // Writing into a Vec cannot fail.
        let _ = gz.write_all(&json_line(record));
        let _ = gz.write_all(b"\n");
    }
    gz.finish().unwrap_or_default()
}

pub struct HttpSink {
    uri: http::Uri,
    /// `HOST:PORT` to connect to.
    address: String,
    tls: Option<(TlsConnector, rustls_pki_types::ServerName<'static>)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpSink {
    pub fn from_config(
        config: &SinkConfig,
        _forward: &ForwardConfig,
    ) -> Result<HttpSink, SinkError> {
        let uri: http::Uri = config
            .endpoint
            .parse()
            .map_err(|e| SinkError::Config(format!("{}: {e}", config.endpoint)))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or_else(|| SinkError::Config("URL without host".into()))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let address = if host.starts_with('[') {
            format!("{host}:{port}")
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if https { Some((tls_connector(config)?, server_name(config)?)) } else { None };
        Ok(HttpSink {
            uri,
            address,
            tls,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            request_timeout: Duration::from_millis(config.ack_timeout_ms),
            sender: None,
        })
    }

    pub fn reset(&mut self) {
        self.sender = None;
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            return Ok(());
        }
        self.sender = None;
        let tcp = tcp_connect(&self.address, self.connect_timeout).await?;
        let http_error = |e: hyper::Error| SinkError::Http(e.to_string());
        let sender = match &self.tls {
            Some((connector, name)) => {
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| SinkError::ConnectTimeout { endpoint: self.address.clone() })?
                .map_err(|e| SinkError::Tls(e.to_string()))?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(http_error)?;
                tokio::spawn(connection);
                sender
            }
            None => {
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(http_error)?;
                tokio::spawn(connection);
                sender
            }
        };
        self.sender = Some(sender);
        Ok(())
    }

    pub async fn probe(&mut self) -> Result<(), SinkError> {
        self.connect().await
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<Delivered, SinkFailure> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(Delivered::default());
        };
        let body = gzip_body(batch);
        let bytes = body.len() as u64;
        let authority = self.uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/x-ndjson")
            .header(http::header::CONTENT_ENCODING, "gzip")
            .header("x-raven-first-id", first.id.to_string())
            .header("x-raven-last-id", last.id.to_string())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SinkFailure::none_acknowledged(SinkError::Http(e.to_string())))?;
        let timeout = self.request_timeout;
        let exchange = async {
            self.connect().await?;
            let sender = self.sender.as_mut().expect("connected");
            sender.ready().await.map_err(|e| SinkError::Http(e.to_string()))?;
            let response =
                sender.send_request(request).await.map_err(|e| SinkError::Http(e.to_string()))?;
            let status = response.status();
            // Drain the answer so the connection can carry the next batch.
            let _ = response.into_body().collect().await;
            if status.is_success() { Ok(()) } else { Err(SinkError::HttpStatus(status.as_u16())) }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(())) => Ok(Delivered { acknowledged: batch.len(), bytes, skipped: 0 }),
            Ok(Err(e)) => Err(SinkFailure::none_acknowledged(e)),
            Err(_) => Err(SinkFailure::none_acknowledged(SinkError::Http(format!(
                "no answer within {} ms",
                timeout.as_millis()
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::{forward::RecordId, record::Stream};

    fn record(seq: u64, decoded: Option<&str>) -> Outgoing {
        Outgoing {
            id: RecordId { appliance: "venue".into(), stream: Stream::Syslog, seq },
            captured_at: std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            src: "198.18.0.2:5140".parse().unwrap(),
            dst_port: 514,
            payload: Bytes::from_static(b"<13>hi"),
            decoded: decoded.map(|d| Bytes::copy_from_slice(d.as_bytes())),
        }
    }

    #[test]
    fn lines_carry_decoded_fields_and_raven_keys() {
        let body = gzip_body(&[record(1, Some(r#"{"severity":5,"stream":"x"}"#)), record(2, None)]);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut text).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["severity"], 5);
        assert_eq!(lines[0]["stream"], "syslog", "Raven's keys win");
        assert_eq!(lines[0]["raven_id"], "venue:syslog:1");
        assert_eq!(lines[0]["ts"], "2023-11-14T22:13:20.25Z");
        assert!(lines[0].get("payload").is_none());
        assert_eq!(lines[1]["payload"], "PDEzPmhp");
        assert_eq!(lines[1]["src"], "198.18.0.2:5140");
        assert_eq!(lines[1]["dst_port"], 514);
    }
}
