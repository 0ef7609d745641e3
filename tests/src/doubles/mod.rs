//! Test doubles: in-process stand-ins, written from public API documentation, for
//! services that cannot be run here. Each says what it implements and what it does not.

pub mod nomad;
