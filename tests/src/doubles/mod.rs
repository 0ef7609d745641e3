//! Test doubles of services Stella drives, each written from the service's public
//! specification and cross-checked with a real client (STYLE §24).

pub mod winrm;
