//! Hand-built Ethernet frames: VLAN tags, IPv4 with options and fragment
//! bits, IPv6 with an extension header, UDP. Checksums are left zero: XDP
//! does not check them, and frames sent on a wire here are taken by XDP
//! before the stack would.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const DST4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

#[derive(Clone)]
pub enum Ip {
    V4 { options: Vec<u8>, fragment: u16 },
    V6 { extension: Option<u8> },
}

#[derive(Clone)]
pub struct Frame {
    pub vlans: Vec<u16>,
    pub ethertype: u16,
    pub ip: Ip,
    pub protocol: u8,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn v4(dst_port: u16, payload: &[u8]) -> Frame {
        Frame {
            vlans: vec![],
            ethertype: 0x0800,
            ip: Ip::V4 { options: vec![], fragment: 0 },
            protocol: 17,
            dst_port,
            payload: payload.to_vec(),
        }
    }

    pub fn v6(dst_port: u16, payload: &[u8]) -> Frame {
        Frame { ethertype: 0x86dd, ip: Ip::V6 { extension: None }, ..Frame::v4(dst_port, payload) }
    }

    /// Bytes on the wire, and the offset where the UDP payload starts.
    pub fn build(&self) -> (Vec<u8>, usize) {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for &tpid in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&100u16.to_be_bytes());
        }
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        let udp_len = (8 + self.payload.len()) as u16;
        match &self.ip {
            Ip::V4 { options, fragment } => {
                let ihl = 5 + options.len() / 4;
                let total = (ihl * 4) as u16 + udp_len;
                f.push(0x40 | ihl as u8);
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&fragment.to_be_bytes());
                f.extend_from_slice(&[64, self.protocol, 0, 0]);
                f.extend_from_slice(&SRC4.octets());
                f.extend_from_slice(&DST4.octets());
                f.extend_from_slice(options);
            }
            Ip::V6 { extension } => {
                let ext_len = if extension.is_some() { 8 } else { 0 };
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(udp_len + ext_len).to_be_bytes());
                f.push(extension.unwrap_or(self.protocol));
                f.push(64);
                f.extend_from_slice(&SRC6.octets());
                f.extend_from_slice(&DST6.octets());
                if let Some(kind) = extension {
                    // Hop-by-hop/fragment headers are both 8 bytes here.
                    // Fragment header: offset 0, more-fragments set.
                    let more_fragments = if *kind == 44 { 1 } else { 0 };
                    f.extend_from_slice(&[self.protocol, 0, 0, more_fragments, 0, 0, 0, 1]);
                }
            }
        }
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        let payload_at = f.len();
        f.extend_from_slice(&self.payload);
        (f, payload_at)
    }
}
