//! tandem: a block device mirrored asynchronously to a second device, with a
//! predictive write-intent record.
//!
//! - [`record`]: the write-intent record (lock-free region state, group commit,
//!   the persistent region file).
//! - [`predict`]: record policies (`predictive`, `lru`, `md-bitmap`).
//! - [`dev`]: block devices (files and block devices through `rings`, and an
//!   in-memory device for tests).
//! - [`mirror`]: the mirror pool that copies dirty regions to the secondary.
//! - [`engine`]: the one request path the front end drives: plan, admit,
//!   issue, complete.

pub mod args;
pub mod config;
pub mod control;
pub mod dev;
pub mod engine;
pub mod error;
pub mod geometry;
pub mod lease;
pub mod mirror;
pub mod peer;
pub mod predict;
pub mod record;
pub mod region;
pub mod stats;
pub mod status;
pub mod units;

pub use engine::{Devices, Engine, EngineConfig, EngineStatus, Plan, Request};
pub use error::{Error, Failure, Result};
pub use geometry::Geometry;
