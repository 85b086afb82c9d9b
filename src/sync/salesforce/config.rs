//! `[destinations.<name>]` with `type = "salesforce"`: its login, API
//! version and Bulk threshold. The call settings every destination shares
//! are [`crate::sync::config::CallSettings`].

use serde::Deserialize;

use crate::sync::config::{JwtSection, OAuthSection};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceDestination {
    /// The REST API version (`v60.0`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// The OAuth 2.0 JWT bearer flow.
    #[serde(default)]
    pub jwt: Option<JwtSection>,
    /// The refresh-token flow.
    #[serde(default)]
    pub oauth: Option<OAuthSection>,
    /// Rows in one run from which they go by Bulk API 2.0 jobs instead of
    /// sObject Collections calls.
    #[serde(default)]
    pub bulk_threshold: Option<usize>,
}
