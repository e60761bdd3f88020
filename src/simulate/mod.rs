//! The built-in simulator of departmental feeds: a synthetic province served over HTTP.
//!
//! Deterministic for a seed and an as-of date. It serves the household roster (乡村振兴),
//! medical claims (医保), monthly wages (人社) and water-supply interruptions (水利) for
//! Qinghai's 45 county-level units, plants known cases and near-miss decoys, and tells which
//! ones it planted (`/planted`, `guardline simulate --list-planted`). Every name and ID
//! number is generated; none belongs to a real person.

mod generate;
mod names;
mod records;
mod server;

pub use generate::{Planted, SimOptions, SimWorld, generate};
pub use records::Records;
pub use server::{router, serve};
