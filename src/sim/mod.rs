//! Vendor emulators: local servers that follow a vendor's published API
//! contract (paths, JSON shapes, status codes, rate-limit headers and error
//! bodies), so tests and demos run ferry over real HTTP on loopback.

pub mod hubspot;
pub mod pagerduty;
pub mod rest;
pub mod salesforce;
pub mod slack;
