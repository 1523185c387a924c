//! Raven's agent. The modules follow the data:
//! `capture → decode → store → forward`, plus `config` and `metrics`.

pub mod record;
