//! Raven's agent. The modules follow the data:
//! `capture → decode → store → forward`, plus `config`, `api` and `metrics`,
//! and `service_manager` (systemd readiness and watchdog).

pub mod api;
pub mod capture;
pub mod config;
pub mod decode;
pub mod forward;
pub mod metrics;
pub mod pipeline;
pub mod privilege;
pub mod record;
pub mod service_manager;
pub mod store;
pub mod tap;
pub mod vpn;
