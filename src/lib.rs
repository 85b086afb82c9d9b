//! ferry: one binary for the GTM data route.
//!
//! Vendor data is landed as append-only Parquet in a lake ([`lake`]), queried
//! with SQL through one DataFusion session factory ([`engine`]), and driven from
//! a project folder described by `ferry.toml` ([`project`]), and modelled
//! with dbt-style SQL models ([`models`]), and synced back to the CRM
//! ([`sync`], over the shared HTTP layer in [`http`]). The command line
//! ([`cli`]) is a thin layer over these modules.

pub mod allocator;
pub mod cli;
pub mod console;
pub mod demo;
pub mod engine;
pub mod error;
pub mod extract;
pub mod http;
pub mod lake;
pub mod metrics;
pub mod models;
pub mod operate;
pub mod project;
pub mod run;
pub mod serve;
pub mod sim;
pub mod sync;

pub use error::{Error, Result};
