//! `[sources.<name>]` with `type = "hubspot"`: CRM objects and associations.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::extract::config::{HubspotStream, Locate, Problem, SourceSpec};
use crate::project::{SchemaMode, SecretSource};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubspotSection {
    /// Default `https://api.hubapi.com`.
    #[serde(default)]
    pub url: Option<String>,
    /// A private-app token, usually `"${HUBSPOT_TOKEN}"`.
    #[serde(default)]
    pub token: Option<String>,
    /// The account's budget per rolling 10 s (default 100).
    #[serde(default)]
    pub requests_per_10s: Option<usize>,
    /// The search endpoint's budget per second (default 4).
    #[serde(default)]
    pub search_per_second: Option<usize>,
    /// Incremental runs read changes made up to this many seconds before
    /// the run's start (default 120), because HubSpot's search index lags
    /// writes; later changes are the next run's.
    #[serde(default)]
    pub search_lag_margin_seconds: Option<u64>,
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    #[serde(default)]
    pub streams: BTreeMap<String, HubspotStreamSection>,
}

/// `[sources.<source>.streams.<name>]` of a HubSpot source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubspotStreamSection {
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    /// The CRM object type (default: the stream's name).
    #[serde(default)]
    pub object: Option<String>,
    /// Properties to extract (default: all, from the properties API).
    #[serde(default)]
    pub properties: Option<Vec<String>>,
    /// Associated object types, landed as `<stream>_<type>` (from_id, to_id).
    #[serde(default)]
    pub associations: Vec<String>,
}

impl HubspotSection {
    pub fn resolve(
        &self,
        name: &str,
        secrets: &SecretSource,
        locate: Locate<'_>,
    ) -> Result<SourceSpec, Problem> {
        let Some(token) = &self.token else {
            return Err(Problem::at(
                "",
                "a hubspot source needs token = \"${HUBSPOT_TOKEN}\" (a private-app token)",
            ));
        };
        let auth = match secrets.interpolate(token) {
            Ok(t) => crate::http::Auth::Bearer(t),
            // Only `ferry extract` needs it: other commands work without.
            Err(m) => crate::http::Auth::Missing(locate(".token", m)),
        };
        let streams: Vec<HubspotStream> = self
            .streams
            .iter()
            .map(|(tname, t)| HubspotStream {
                name: tname.clone(),
                object: t.object.clone().unwrap_or_else(|| tname.clone()),
                properties: t.properties.clone(),
                associations: t.associations.clone(),
            })
            .collect();
        if streams.is_empty() {
            return Err(Problem::at(
                "",
                "a hubspot source needs streams, for example [sources.hubspot.streams.contacts]",
            ));
        }
        Ok(SourceSpec::Hubspot {
            name: name.to_string(),
            url: self
                .url
                .clone()
                .unwrap_or_else(|| "https://api.hubapi.com".into())
                .trim_end_matches('/')
                .to_string(),
            auth,
            requests_per_10s: self.requests_per_10s.unwrap_or(100),
            search_per_second: self.search_per_second.unwrap_or(4),
            lag_margin: std::time::Duration::from_secs(
                self.search_lag_margin_seconds.unwrap_or(120),
            ),
            streams,
        })
    }
}
