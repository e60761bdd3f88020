//! guardline: early warning of households at risk of falling back into poverty.
//!
//! See ARCHITECTURE.md for the map of the modules and the invariants each keeps.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod backtest;
pub mod bench;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dispatch;
pub mod engine;
pub mod feeds;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod parallel;
pub mod pseudonym;
pub mod quarantine;
pub mod regions;
pub mod retry;
pub mod rules;
pub mod ruletest;
pub mod sd_notify;
pub mod silence;
pub mod simulate;
pub mod state;
pub mod store;
pub mod supervise;
