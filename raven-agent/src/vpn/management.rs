//! OpenVPN's management-interface line protocol and the tunnel state machine
//! driven by it. Pure: no sockets here, so it is unit-testable without openvpn.
//!
//! # Invariants
//! - Every line parses into a [`Message`]; unknown lines become
//!   [`Message::Other`] rather than an error (OpenVPN adds notifications over time).
//! - The tunnel address is known only in ASSIGN_IP / ADD_ROUTES / CONNECTED and is
//!   cleared when the tunnel leaves those states.
//!
//! # Protocol
//! ```text
//! >STATE:1700000000,CONNECTED,SUCCESS,10.8.0.2,198.18.0.1,1194,,
//! >HOLD:Waiting for hold release:0
//! >BYTECOUNT:1234,5678
//! >INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info
//! >LOG:1700000000,I,Initialization Sequence Completed
//! SUCCESS: real-time state notification set to ON
//! ERROR: unknown command, enter 'help' for more options
//! ```
//! Commands the agent sends: `state on`, `bytecount N`, `hold release`, `signal SIGTERM`.
//!
//! # Operations
//! [`parse_line`], [`TunnelTracker::apply`].

use std::net::IpAddr;

use serde::Serialize;

/// OpenVPN's connection states (`>STATE:` second field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TunnelState {
    /// The openvpn child is not running (or not yet talking to us).
    Stopped,
    Connecting,
    Resolve,
    TcpConnect,
    Wait,
    Auth,
    GetConfig,
    AssignIp,
    AddRoutes,
    Connected,
    Reconnecting,
    Exiting,
    AuthPending,
}

impl TunnelState {
    pub const ALL: [TunnelState; 13] = [
        TunnelState::Stopped,
        TunnelState::Connecting,
        TunnelState::Resolve,
        TunnelState::TcpConnect,
        TunnelState::Wait,
        TunnelState::Auth,
        TunnelState::GetConfig,
        TunnelState::AssignIp,
        TunnelState::AddRoutes,
        TunnelState::Connected,
        TunnelState::Reconnecting,
        TunnelState::Exiting,
        TunnelState::AuthPending,
    ];

    /// The name OpenVPN uses (also the `state` label of `raven_vpn_state`).
    pub fn name(self) -> &'static str {
        match self {
            TunnelState::Stopped => "STOPPED",
            TunnelState::Connecting => "CONNECTING",
            TunnelState::Resolve => "RESOLVE",
            TunnelState::TcpConnect => "TCP_CONNECT",
            TunnelState::Wait => "WAIT",
            TunnelState::Auth => "AUTH",
            TunnelState::GetConfig => "GET_CONFIG",
            TunnelState::AssignIp => "ASSIGN_IP",
            TunnelState::AddRoutes => "ADD_ROUTES",
            TunnelState::Connected => "CONNECTED",
            TunnelState::Reconnecting => "RECONNECTING",
            TunnelState::Exiting => "EXITING",
            TunnelState::AuthPending => "AUTH_PENDING",
        }
    }

    pub fn from_name(name: &str) -> Option<TunnelState> {
        TunnelState::ALL.into_iter().find(|s| s.name() == name)
    }

    fn has_address(self) -> bool {
        matches!(self, TunnelState::AssignIp | TunnelState::AddRoutes | TunnelState::Connected)
    }
}

/// A `>STATE:` notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// Seconds since the epoch, as reported by OpenVPN.
    pub time: i64,
    pub state: TunnelState,
    /// The state's reason (e.g. `SUCCESS`, `ping-restart`, `SIGUSR1`).
    pub description: String,
    pub local_address: Option<IpAddr>,
    pub remote_address: Option<IpAddr>,
    pub remote_port: Option<u16>,
}

/// One line from the management interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    State(StateChange),
    /// `>STATE:` with a state name we do not know; kept for logging.
    UnknownState(String),
    Hold(String),
    ByteCount {
        bytes_in: u64,
        bytes_out: u64,
    },
    Info(String),
    Log {
        time: i64,
        flags: String,
        text: String,
    },
    Fatal(String),
    Success(String),
    Error(String),
    Other(String),
}

fn parse_ip(field: Option<&str>) -> Option<IpAddr> {
    field.filter(|f| !f.is_empty()).and_then(|f| f.parse().ok())
}

/// Parses one line (without its line terminator).
pub fn parse_line(line: &str) -> Message {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(rest) = line.strip_prefix(">STATE:") {
        let fields: Vec<&str> = rest.split(',').collect();
        let Some(state) = fields.get(1).and_then(|name| TunnelState::from_name(name)) else {
            return Message::UnknownState(rest.to_string());
        };
        return Message::State(StateChange {
            time: fields.first().and_then(|t| t.parse().ok()).unwrap_or(0),
            state,
            description: fields.get(2).unwrap_or(&"").to_string(),
            local_address: parse_ip(fields.get(3).copied()),
            remote_address: parse_ip(fields.get(4).copied()),
            remote_port: fields.get(5).and_then(|p| p.parse().ok()),
        });
    }
    if let Some(rest) = line.strip_prefix(">HOLD:") {
        return Message::Hold(rest.to_string());
    }
    if let Some(rest) = line.strip_prefix(">BYTECOUNT:") {
        let mut parts = rest.split(',');
        let counts =
            (parts.next().and_then(|v| v.parse().ok()), parts.next().and_then(|v| v.parse().ok()));
        if let (Some(bytes_in), Some(bytes_out)) = counts {
            return Message::ByteCount { bytes_in, bytes_out };
        }
        return Message::Other(line.to_string());
    }
    if let Some(rest) = line.strip_prefix(">INFO:") {
        return Message::Info(rest.to_string());
    }
    if let Some(rest) = line.strip_prefix(">LOG:") {
        let mut parts = rest.splitn(3, ',');
        let time = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
        let flags = parts.next().unwrap_or("").to_string();
        let text = parts.next().unwrap_or("").to_string();
        return Message::Log { time, flags, text };
    }
    if let Some(rest) = line.strip_prefix(">FATAL:") {
        return Message::Fatal(rest.to_string());
    }
    if let Some(rest) = line.strip_prefix("SUCCESS:") {
        return Message::Success(rest.trim().to_string());
    }
    if let Some(rest) = line.strip_prefix("ERROR:") {
        return Message::Error(rest.trim().to_string());
    }
    Message::Other(line.to_string())
}

/// What the supervisor must do after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// Send `hold release`.
    ReleaseHold,
    /// The state changed (to the given state); publish it.
    StateChanged(TunnelState),
    /// The byte counters changed; publish them.
    Bytes,
}

/// The tunnel as seen through the management interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelTracker {
    pub state: TunnelState,
    pub description: String,
    pub tunnel_address: Option<IpAddr>,
    pub remote_address: Option<IpAddr>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// How many times the tunnel entered RECONNECTING.
    pub reconnects: u64,
    /// How many holds were released.
    pub holds_released: u64,
}

impl Default for TunnelTracker {
    fn default() -> Self {
        TunnelTracker {
            state: TunnelState::Stopped,
            description: String::new(),
            tunnel_address: None,
            remote_address: None,
            bytes_in: 0,
            bytes_out: 0,
            reconnects: 0,
            holds_released: 0,
        }
    }
}

impl TunnelTracker {
    /// Applies one message and says what the supervisor must do.
    pub fn apply(&mut self, message: &Message) -> Action {
        match message {
            Message::State(change) => {
                let previous = self.state;
                self.state = change.state;
                self.description = change.description.clone();
                if change.state.has_address() {
                    if change.local_address.is_some() {
                        self.tunnel_address = change.local_address;
                    }
                    if change.remote_address.is_some() {
                        self.remote_address = change.remote_address;
                    }
                } else {
                    self.tunnel_address = None;
                }
                if change.state == TunnelState::Reconnecting
                    && previous != TunnelState::Reconnecting
                {
                    self.reconnects += 1;
                }
                if previous == change.state {
                    Action::None
                } else {
                    Action::StateChanged(change.state)
                }
            }
            Message::Hold(_) => {
                self.holds_released += 1;
                Action::ReleaseHold
            }
            Message::ByteCount { bytes_in, bytes_out } => {
                self.bytes_in = *bytes_in;
                self.bytes_out = *bytes_out;
                Action::Bytes
            }
            _ => Action::None,
        }
    }

    /// The child exited: nothing is connected any more.
    pub fn stopped(&mut self) {
        self.state = TunnelState::Stopped;
        self.tunnel_address = None;
        self.description = "openvpn exited".to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines recorded from `openvpn --management ... --management-hold` (2.6), client side.
    const RECORDED: &[&str] = &[
        ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info",
        ">HOLD:Waiting for hold release:0",
        "SUCCESS: real-time state notification set to ON",
        "SUCCESS: bytecount interval changed",
        "SUCCESS: hold release succeeded",
        ">STATE:1764355000,RESOLVE,,,,,,",
        ">STATE:1764355000,WAIT,,,,,,",
        ">STATE:1764355000,AUTH,,,,,,",
        ">STATE:1764355001,GET_CONFIG,,,,,,",
        ">STATE:1764355001,ASSIGN_IP,,198.19.0.6,,,,",
        ">STATE:1764355001,ADD_ROUTES,,,,,,",
        ">STATE:1764355001,CONNECTED,SUCCESS,198.19.0.6,198.18.1.1,1194,198.18.1.2,41000",
        ">BYTECOUNT:5230,4886",
        ">STATE:1764355030,RECONNECTING,ping-restart,,,,,",
        ">STATE:1764355030,EXITING,SIGTERM,,,,,",
    ];

    #[test]
    fn parses_recorded_lines() {
        assert!(
            matches!(parse_line(RECORDED[0]), Message::Info(ref i) if i.starts_with("OpenVPN Management"))
        );
        assert_eq!(parse_line(RECORDED[1]), Message::Hold("Waiting for hold release:0".into()));
        assert_eq!(
            parse_line(RECORDED[2]),
            Message::Success("real-time state notification set to ON".into())
        );
        assert_eq!(
            parse_line(RECORDED[11]),
            Message::State(StateChange {
                time: 1764355001,
                state: TunnelState::Connected,
                description: "SUCCESS".into(),
                local_address: Some("198.19.0.6".parse().unwrap()),
                remote_address: Some("198.18.1.1".parse().unwrap()),
                remote_port: Some(1194),
            })
        );
        assert_eq!(
            parse_line(RECORDED[12]),
            Message::ByteCount { bytes_in: 5230, bytes_out: 4886 }
        );
        assert_eq!(
            parse_line(">LOG:1764355001,I,Initialization Sequence Completed, really"),
            Message::Log {
                time: 1764355001,
                flags: "I".into(),
                text: "Initialization Sequence Completed, really".into()
            }
        );
        assert_eq!(parse_line("ERROR: unknown command"), Message::Error("unknown command".into()));
        assert_eq!(
            parse_line(">STATE:1,NEW_THING,,"),
            Message::UnknownState("1,NEW_THING,,".into())
        );
        assert_eq!(parse_line(">BYTECOUNT:x,1"), Message::Other(">BYTECOUNT:x,1".into()));
        assert_eq!(parse_line(">FATAL:cannot open TUN"), Message::Fatal("cannot open TUN".into()));
        assert_eq!(parse_line("garbage\r"), Message::Other("garbage".into()));
    }

    #[test]
    fn tracks_a_connection_through_reconnect() {
        let mut tracker = TunnelTracker::default();
        let mut actions = Vec::new();
        let mut seen_address_when_connected = None;
        for line in RECORDED {
            let action = tracker.apply(&parse_line(line));
            if tracker.state == TunnelState::Connected {
                seen_address_when_connected = tracker.tunnel_address;
            }
            actions.push(action);
        }
        assert_eq!(actions[1], Action::ReleaseHold);
        assert_eq!(seen_address_when_connected, Some("198.19.0.6".parse().unwrap()));
        assert!(actions.contains(&Action::StateChanged(TunnelState::Connected)));
        assert_eq!(tracker.state, TunnelState::Exiting);
        assert_eq!(tracker.tunnel_address, None, "the address is gone after RECONNECTING");
        assert_eq!(tracker.reconnects, 1);
        assert_eq!((tracker.bytes_in, tracker.bytes_out), (5230, 4886));
        assert_eq!(tracker.holds_released, 1);
    }

    #[test]
    fn address_survives_add_routes_without_fields() {
        let mut tracker = TunnelTracker::default();
        tracker.apply(&parse_line(">STATE:1,ASSIGN_IP,,198.19.0.6,,,,"));
        tracker.apply(&parse_line(">STATE:1,ADD_ROUTES,,,,,,"));
        assert_eq!(tracker.tunnel_address, Some("198.19.0.6".parse().unwrap()));
        tracker.stopped();
        assert_eq!((tracker.state, tracker.tunnel_address), (TunnelState::Stopped, None));
    }

    #[test]
    fn every_hold_is_released() {
        let mut tracker = TunnelTracker::default();
        for _ in 0..3 {
            assert_eq!(
                tracker.apply(&parse_line(">HOLD:Waiting for hold release:10")),
                Action::ReleaseHold
            );
        }
        assert_eq!(tracker.holds_released, 3);
    }
}
