//! SNMP trap sink: notifications re-sent to the NOC's trap receiver.
//!
//! Invariants:
//! - SNMPv1 Trap-PDUs and SNMPv2c SNMPv2-Trap-PDUs go out byte for byte as
//!   received (community included), one datagram each.
//! - SNMPv2c InformRequest-PDUs (already answered by Raven at capture) go
//!   out as SNMPv2-Trap-PDUs when `informs_as_traps` is on: only the PDU tag
//!   changes (0xA6 → 0xA7), which has the same BER length, so every length
//!   in the message stays valid; the lengths in front of it are still parsed
//!   (short and long form) to find the tag. With it off, the inform goes
//!   unchanged and the receiver's Response is ignored.
//! - SNMPv3 messages go unchanged. Which PDU one carries comes from its
//!   decoded fields: a plaintext scoped PDU, or one Raven decrypted with a
//!   configured USM user. Engine-discovery probes, Reports and other
//!   non-notifications are skipped like v1/v2c ones; a PDU Raven could not
//!   decrypt is sent (it may be a trap the receiver can read).
//! - Anything else on the snmp stream (Get, Response, Report... in v1/v2c)
//!   is not a notification: skipped as acknowledged and counted
//!   (`not_a_notification`); a message whose BER does not parse is skipped
//!   and counted (`unparsed`). Neither is ever sent to a trap receiver.
//! - Acknowledged: the kernel accepted the datagram (UDP).

use tokio::net::UdpSocket;

use super::{Delivered, Outgoing, SinkError, SinkFailure};
use crate::{
    config::SinkConfig,
    decode::snmp::{INFORM, Message, TRAP_V1, TRAP_V2, classify},
};

/// Why a record was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    NotANotification,
    Unparsed,
}

/// The `pdu_type`s of `docs/records.md` that are notifications.
const NOTIFICATIONS: [&str; 3] = ["trap_v1", "trap_v2", "inform_request"];

/// The PDU type the decoder read, when it could (v3: plaintext or
/// decrypted); None when the PDU stayed encrypted or nothing was decoded.
fn known_pdu(decoded: Option<&[u8]>) -> Option<String> {
    let fields: serde_json::Value = serde_json::from_slice(decoded?).ok()?;
    fields.get("pdu_type")?.as_str().map(str::to_string)
}

/// The datagram to send for one stored message, or why none is sent.
pub fn outgoing_datagram(message: &[u8], informs_as_traps: bool) -> Result<Vec<u8>, Skip> {
    match classify(message).ok_or(Skip::Unparsed)? {
        Message::V3 => Ok(message.to_vec()),
        Message::Community { version: 0, pdu_tag: TRAP_V1, .. } => Ok(message.to_vec()),
        Message::Community { version: 1, pdu_tag: TRAP_V2, .. } => Ok(message.to_vec()),
        Message::Community { version: 1, pdu_tag: INFORM, pdu_at } => {
            let mut out = message.to_vec();
            if informs_as_traps {
                out[pdu_at] = TRAP_V2;
            }
            Ok(out)
        }
        Message::Community { .. } => Err(Skip::NotANotification),
    }
}

pub struct SnmpSink {
    endpoint: String,
    informs_as_traps: bool,
    socket: Option<UdpSocket>,
    not_a_notification: u64,
    unparsed: u64,
}

impl SnmpSink {
    pub fn from_config(config: &SinkConfig) -> SnmpSink {
        SnmpSink {
            endpoint: config.endpoint.clone(),
            informs_as_traps: config.informs_as_traps,
            socket: None,
            not_a_notification: 0,
            unparsed: 0,
        }
    }

    /// Records skipped so far: (not a notification, unparsed).
    pub fn skipped(&self) -> (u64, u64) {
        (self.not_a_notification, self.unparsed)
    }

    pub fn reset(&mut self) {
        self.socket = None;
    }

    async fn socket(&mut self) -> Result<&UdpSocket, SinkError> {
        super::connected_udp(&mut self.socket, &self.endpoint).await
    }

    pub async fn probe(&mut self) -> Result<(), SinkError> {
        self.socket().await.map(|_| ())
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<Delivered, SinkFailure> {
        let datagrams: Vec<Result<Vec<u8>, Skip>> = batch
            .iter()
            .map(|r| {
                let datagram = outgoing_datagram(&r.payload, self.informs_as_traps)?;
                match known_pdu(r.decoded.as_deref()) {
                    Some(pdu) if !NOTIFICATIONS.contains(&pdu.as_str()) => {
                        Err(Skip::NotANotification)
                    }
                    _ => Ok(datagram),
                }
            })
            .collect();
        let socket = self.socket().await.map_err(SinkFailure::none_acknowledged)?;
        let mut delivered = Delivered::default();
        let mut skipped = (0, 0);
        for datagram in &datagrams {
            match datagram {
                Ok(bytes) => match socket.send(bytes).await {
                    Ok(n) => delivered.bytes += n as u64,
                    Err(e) => {
                        self.not_a_notification += skipped.0;
                        self.unparsed += skipped.1;
                        return Err(SinkFailure {
                            acknowledged: delivered.acknowledged,
                            error: SinkError::Write(e),
                        });
                    }
                },
                Err(Skip::NotANotification) => {
                    skipped.0 += 1;
                    delivered.skipped += 1;
                }
                Err(Skip::Unparsed) => {
                    skipped.1 += 1;
                    delivered.skipped += 1;
                }
            }
            delivered.acknowledged += 1;
        }
        self.not_a_notification += skipped.0;
        self.unparsed += skipped.1;
        Ok(delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::snmp::tlv;

    /// A v2c message with `pdu_tag` and a PDU body of `body_len` bytes.
    fn v2c(pdu_tag: u8, body_len: usize) -> Vec<u8> {
        let mut pdu = vec![pdu_tag];
        push_len(&mut pdu, body_len);
        pdu.extend(std::iter::repeat_n(0x05, body_len));
        let mut inner = vec![0x02, 0x01, 0x01, 0x04, 0x06];
        inner.extend_from_slice(b"public");
        inner.extend(pdu);
        let mut out = vec![0x30];
        push_len(&mut out, inner.len());
        out.extend(inner);
        out
    }

    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
    }

    #[test]
    fn informs_become_traps_with_short_and_long_lengths() {
        for body_len in [10, 200, 3000] {
            let inform = v2c(INFORM, body_len);
            let out = outgoing_datagram(&inform, true).unwrap();
            assert_eq!(out.len(), inform.len());
            let Some(Message::Community { pdu_tag, pdu_at, .. }) = classify(&out) else { panic!() };
            assert_eq!(pdu_tag, TRAP_V2);
            let diff: Vec<usize> = (0..out.len()).filter(|&i| out[i] != inform[i]).collect();
            assert_eq!(diff, [pdu_at], "only the PDU tag changes");
            assert_eq!(outgoing_datagram(&inform, false).unwrap(), inform);
        }
    }

    #[test]
    fn decoded_v3_pdus_tell_notifications_from_discovery() {
        assert_eq!(
            known_pdu(Some(br#"{"version":3,"pdu_type":"get_request"}"#)).as_deref(),
            Some("get_request")
        );
        assert_eq!(known_pdu(Some(br#"{"version":3,"encrypted":true}"#)), None);
        assert_eq!(known_pdu(None), None);
        assert!(NOTIFICATIONS.contains(&"inform_request"));
        assert!(!NOTIFICATIONS.contains(&"report"));
    }

    #[test]
    fn traps_go_unchanged_and_other_pdus_are_skipped() {
        let trap = v2c(TRAP_V2, 30);
        assert_eq!(outgoing_datagram(&trap, true).unwrap(), trap);
        assert_eq!(outgoing_datagram(&v2c(0xA2, 30), true), Err(Skip::NotANotification));
        assert_eq!(outgoing_datagram(&v2c(0xA0, 30), true), Err(Skip::NotANotification));
        for cut in 0..trap.len() {
            assert_eq!(outgoing_datagram(&trap[..cut], true), Err(Skip::Unparsed), "cut at {cut}");
        }
    }

    #[test]
    fn net_snmp_captures_are_classified() {
        // The shared Net-SNMP capture: v1 trap, v2c inform/response/trap, v3.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/_generated-locally/net-snmp-5.9.3/netsnmp-traps-informs.pcap");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut reader = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
        let mut kinds = Vec::new();
        while let Some(Ok(packet)) = reader.next_packet() {
            // Loopback capture (DLT_NULL 4 bytes or Ethernet 14) + IPv4 20 + UDP 8.
            let data = &packet.data;
            let start = (0..data.len().saturating_sub(2))
                .find(|&i| {
                    data[i] == 0x30
                        && classify(&data[i..]).is_some_and(|m| {
                            let (_, s, l) = tlv(&data[i..], 0).unwrap();
                            s + l == data.len() - i
                                && matches!(m, Message::V3 | Message::Community { .. })
                        })
                })
                .expect("an SNMP message in every packet");
            kinds.push(match classify(&data[start..]).unwrap() {
                Message::V3 => "v3".to_string(),
                Message::Community { version, pdu_tag, .. } => format!("v{version}:{pdu_tag:02x}"),
            });
        }
        for want in ["v0:a4", "v1:a6", "v1:a2", "v1:a7", "v3"] {
            assert!(kinds.iter().any(|k| k == want), "{want} not in {kinds:?}");
        }
    }
}
