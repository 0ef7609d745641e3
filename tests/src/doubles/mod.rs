//! Test doubles of services Stella drives that cannot run here, each written from the
//! service's public API documentation or specification, saying what it implements and
//! what it does not, and cross-checked with a real client.

pub mod ecs;
pub mod nomad;
pub mod winrm;
