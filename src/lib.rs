//! ferry: one binary for the GTM data route.
//!
//! Vendor data is landed as append-only Parquet in a lake ([`lake`]), queried
//! with SQL through one DataFusion session factory ([`engine`]), and driven from
//! a project folder described by `ferry.toml` ([`project`]), and modelled
//! with dbt-style SQL models ([`models`]). The command line
//! ([`cli`]) is a thin layer over these modules.

pub mod cli;
pub mod engine;
pub mod error;
pub mod lake;
pub mod models;
pub mod project;
pub mod sim;

pub use error::{Error, Result};
