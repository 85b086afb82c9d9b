//! `[sources.<name>]` with `type = "rest"`: a declarative REST API.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::extract::config::{
    AuthSection, Incremental, Locate, Pagination, Parent, Problem, RestStream, SourceSpec,
    order_streams,
};
use crate::project::{SchemaMode, SecretSource};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestSection {
    /// The API's base URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Credentials: `{ type = "bearer" | "api_key" | "basic" | "oauth2", ... }`.
    #[serde(default)]
    pub auth: Option<AuthSection>,
    /// Requests per second to this API (all streams together).
    #[serde(default)]
    pub requests_per_second: Option<usize>,
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    #[serde(default)]
    pub streams: BTreeMap<String, RestStreamSection>,
}

/// `[sources.<source>.streams.<name>]` of a REST source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestStreamSection {
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    /// Path under the source's url (`/sequences/{id}/steps` for a child stream).
    #[serde(default)]
    pub path: Option<String>,
    /// Extra query parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Dotted path of the records array in the reply (absent: the reply is the array).
    #[serde(default)]
    pub records: Option<String>,
    /// Dotted path of the field identifying a record.
    #[serde(default)]
    pub primary_key: Option<String>,
    #[serde(default)]
    pub pagination: Option<Pagination>,
    #[serde(default)]
    pub incremental: Option<Incremental>,
    /// A parent stream whose records each give one request.
    #[serde(default)]
    pub parent: Option<Parent>,
}

impl RestSection {
    /// Resolve without I/O. An unset secret becomes `Auth::Missing`: it
    /// fails the calls that need it, not commands that never call the vendor.
    pub fn resolve(
        &self,
        name: &str,
        secrets: &SecretSource,
        locate: Locate<'_>,
    ) -> Result<SourceSpec, Problem> {
        let Some(url) = self.url.clone() else {
            return Err(Problem::at(
                "",
                "a rest source needs url = \"https://api.vendor.com/v1\"",
            ));
        };
        use AuthSection as A;
        if let Some(A::ApiKey { header, query, .. }) = &self.auth
            && header.is_some() == query.is_some()
        {
            return Err(Problem::at(
                ".auth",
                "api_key auth needs exactly one of header = \"X-Api-Key\" or query = \"api_key\"",
            ));
        }
        let secret = |v: &String| secrets.interpolate(v).map_err(|m| Problem::at(".auth", m));
        let resolve = || -> Result<crate::http::Auth, Problem> {
            Ok(match &self.auth {
                None => crate::http::Auth::None,
                Some(A::Bearer { token }) => crate::http::Auth::Bearer(secret(token)?),
                Some(A::ApiKey {
                    key,
                    header: Some(h),
                    ..
                }) => crate::http::Auth::ApiKeyHeader {
                    header: h.clone(),
                    key: secret(key)?,
                },
                Some(A::ApiKey { key, query, .. }) => crate::http::Auth::ApiKeyQuery {
                    param: query.clone().unwrap_or_default(),
                    key: secret(key)?,
                },
                Some(A::Basic { username, password }) => crate::http::Auth::Basic {
                    // An access-key id is often kept with its secret.
                    username: secret(username)?,
                    password: secret(password)?,
                },
                Some(A::Oauth2 {
                    token_url,
                    client_id,
                    client_secret,
                    scopes,
                }) => crate::http::Auth::ClientCredentials(crate::http::ClientCredentials {
                    token_url: token_url.clone(),
                    client_id: client_id.clone(),
                    client_secret: secret(client_secret)?,
                    scopes: scopes.clone(),
                }),
            })
        };
        let auth =
            resolve().unwrap_or_else(|e| crate::http::Auth::Missing(locate(&e.key, e.message)));
        let mut streams = Vec::new();
        for (tname, t) in &self.streams {
            let Some(path) = t.path.clone() else {
                return Err(Problem::at(
                    format!(".streams.{tname}"),
                    format!("stream {tname} needs path = \"/{tname}\""),
                ));
            };
            streams.push(RestStream {
                name: tname.clone(),
                path,
                params: t.params.clone(),
                records: t.records.clone().unwrap_or_default(),
                primary_key: t.primary_key.clone(),
                pagination: t.pagination.clone().unwrap_or(Pagination::None),
                incremental: t.incremental.clone(),
                parent: t.parent.clone(),
            });
        }
        let streams = order_streams(streams).map_err(|m| Problem::at("", m))?;
        Ok(SourceSpec::Rest {
            name: name.to_string(),
            url: url.trim_end_matches('/').to_string(),
            auth,
            requests_per_second: self.requests_per_second,
            streams,
        })
    }
}
