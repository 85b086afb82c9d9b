//! `[sources.<name>]` with `type = "webhook"`: signed deliveries that
//! `ferry serve` receives.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::extract::config::{
    LandStreamSection, Problem, Reconcile, ReconcileSection, WebhookPreset, WebhookSpec,
};
use crate::project::{SchemaMode, SecretSource};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// `hubspot`, `stripe` or `typeform` (the signature scheme).
    pub preset: Option<WebhookPreset>,
    /// The signing secret, usually `"${STRIPE_WEBHOOK_SECRET}"`.
    pub secret: Option<String>,
    /// Largest accepted body in bytes (default 1 MiB).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// How old a signed timestamp may be, in seconds (default 300).
    #[serde(default)]
    pub tolerance_seconds: Option<u64>,
    /// The public URL the vendor calls (HubSpot signs it).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Poll this API stream for the events the webhooks missed (a schedule
    /// with `run = "reconcile"`).
    #[serde(default)]
    pub reconcile: Option<ReconcileSection>,
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    #[serde(default)]
    pub streams: BTreeMap<String, LandStreamSection>,
}

impl WebhookSection {
    pub fn resolve(&self, name: &str, secrets: &SecretSource) -> Result<WebhookSpec, Problem> {
        let (Some(preset), Some(secret)) = (self.preset, &self.secret) else {
            return Err(Problem::at(
                "",
                "a webhook source needs preset = \"hubspot\" | \"stripe\" | \"typeform\" and secret = \"${WEBHOOK_SECRET}\"",
            ));
        };
        let secret = secrets
            .interpolate(secret)
            .map_err(|m| Problem::at(".secret", m))?;
        // HubSpot signs the https URL configured in the app, which ferry
        // cannot know from the request behind a proxy.
        if preset == WebhookPreset::Hubspot {
            match self.public_url.as_deref().map(url::Url::parse) {
                Some(Ok(u)) if u.scheme() == "https" || u.scheme() == "http" => {}
                Some(_) => {
                    return Err(Problem::at(
                        ".public_url",
                        "public_url must be the full URL HubSpot calls, e.g. \"https://ferry.example.com/webhooks/hubspot_events\"",
                    ));
                }
                None => {
                    return Err(Problem::at(
                        "",
                        format!(
                            "a hubspot webhook source needs public_url: HubSpot signs the URL set in the app's webhook settings (e.g. \"https://ferry.example.com/webhooks/{name}\"), and without it no delivery can be verified"
                        ),
                    ));
                }
            }
        }
        Ok(WebhookSpec {
            name: name.to_string(),
            preset,
            secret,
            max_body_bytes: self.max_body_bytes.unwrap_or(1024 * 1024),
            tolerance_seconds: self.tolerance_seconds.unwrap_or(300),
            public_url: self.public_url.clone(),
            reconcile: match &self.reconcile {
                None => None,
                Some(r) => Some(Reconcile::resolve(r).map_err(|m| Problem::at(".reconcile", m))?),
            },
        })
    }
}
