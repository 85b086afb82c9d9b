//! `[sources.<name>]` with `type = "salesforce"`: sObjects by SOQL.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::extract::config::{
    DEFAULT_QUERY_BULK_THRESHOLD, Locate, Problem, SalesforceStream, SourceSpec,
};
use crate::project::{SchemaMode, SecretSource};
use crate::sync::config::{JwtSection, OAuthSection};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceSection {
    /// The login host (default `https://login.salesforce.com`).
    #[serde(default)]
    pub url: Option<String>,
    /// The REST API version (`v60.0`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// The JWT bearer login.
    #[serde(default)]
    pub jwt: Option<JwtSection>,
    /// The refresh-token login.
    #[serde(default)]
    pub oauth: Option<OAuthSection>,
    /// Incremental runs read changes up to this many seconds before the
    /// run's start (default 60).
    #[serde(default)]
    pub search_lag_margin_seconds: Option<u64>,
    /// A stream whose query matches this many records or more is read by a
    /// Bulk API 2.0 query job (default 10,000; 0: always).
    #[serde(default)]
    pub bulk_threshold: Option<u64>,
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    #[serde(default)]
    pub streams: BTreeMap<String, SalesforceStreamSection>,
}

/// `[sources.<source>.streams.<name>]` of a Salesforce source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceStreamSection {
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    /// The sObject (default: the stream's name).
    #[serde(default)]
    pub object: Option<String>,
    /// Fields to extract (default: all, from `describe`).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

impl SalesforceSection {
    pub fn resolve(
        &self,
        name: &str,
        secrets: &SecretSource,
        locate: Locate<'_>,
    ) -> Result<SourceSpec, Problem> {
        let secret = |key: &str, v: &str| {
            secrets
                .interpolate(v)
                .map_err(|m| crate::error::Error::Input(locate(&format!(".{key}"), m)))
        };
        let secret: &crate::sync::destination::SecretFn<'_> = &secret;
        // The destination's login code.
        let auth = match crate::sync::salesforce::login_auth(
            self.url.as_deref(),
            self.jwt.as_ref(),
            self.oauth.as_ref(),
            secret,
        ) {
            Ok(a) => a,
            Err(crate::sync::destination::AuthProblem::Config(why)) => {
                return Err(Problem::at("", why));
            }
            Err(crate::sync::destination::AuthProblem::Secret(e)) => {
                crate::http::Auth::Missing(e.to_string())
            }
        };
        for (tname, t) in &self.streams {
            if let Some(f) = t.fields.iter().flatten().find(|f| f.contains('.')) {
                return Err(Problem::at(
                    format!(".streams.{tname}.fields"),
                    format!(
                        "{f:?} is a relationship field: the REST API returns it nested and Bulk queries flat, so ferry reads relationships as streams of their own (extract the related object and join on its Id)"
                    ),
                ));
            }
        }
        let streams: Vec<SalesforceStream> = self
            .streams
            .iter()
            .map(|(tname, t)| SalesforceStream {
                name: tname.clone(),
                object: t.object.clone().unwrap_or_else(|| tname.clone()),
                fields: t.fields.clone(),
            })
            .collect();
        if streams.is_empty() {
            return Err(Problem::at(
                "",
                "a salesforce source needs streams, for example [sources.salesforce.streams.lead] (object = \"Lead\")",
            ));
        }
        Ok(SourceSpec::Salesforce {
            name: name.to_string(),
            url: self
                .url
                .clone()
                .unwrap_or_else(|| "https://login.salesforce.com".into())
                .trim_end_matches('/')
                .to_string(),
            api_version: self.api_version.clone().unwrap_or_else(|| "v60.0".into()),
            auth,
            lag_margin: std::time::Duration::from_secs(
                self.search_lag_margin_seconds.unwrap_or(60),
            ),
            bulk_threshold: self.bulk_threshold.unwrap_or(DEFAULT_QUERY_BULK_THRESHOLD),
            streams,
        })
    }
}
