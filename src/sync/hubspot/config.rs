//! `[destinations.<name>]` with `type = "hubspot"`: its credentials. The
//! call settings every destination shares are [`crate::sync::config::CallSettings`].

use serde::Deserialize;

use crate::sync::config::OAuthSection;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubspotDestination {
    /// A private-app token, usually `"${HUBSPOT_TOKEN}"`.
    #[serde(default)]
    pub token: Option<String>,
    /// OAuth instead of a token.
    #[serde(default)]
    pub oauth: Option<OAuthSection>,
}
