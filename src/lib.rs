//! guardline: early warning of households at risk of falling back into poverty.
//!
//! See ARCHITECTURE.md for the map of the modules and the invariants each keeps.
#![forbid(unsafe_code)]

pub mod config;
pub mod model;
pub mod pseudonym;
pub mod regions;
pub mod state;
pub mod store;
pub mod rules;
