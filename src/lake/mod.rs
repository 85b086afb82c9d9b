//! The lake: everything ferry stores, on one object store.
//!
//! [`Lake`] wraps an `Arc<dyn ObjectStore>` rooted at the lake's folder, built
//! from a path or URL (local folder by default; `memory://`, `s3://`, `gs://`,
//! `az://`). All paths below are relative to that root, so a project moves to
//! S3 by changing `lake.url` and nothing else.
//!
//! Layout (see [`layout`]):
//! - `raw/<source>/<stream>/dt=YYYY-MM-DD/<run_id>-<seq>.parquet`: landed data,
//!   append-only, each file written once with `PutMode::Create`.
//! - `_ferry/schemas/<source>/<stream>/v<NNNNNNNN>.json`: the stream's schema
//!   history (one file per version, also write-once).
//! - `_ferry/ingestions/dt=.../<run_id>-<seq>.parquet`: the ingestion log
//!   (`ferry.ingestions`).
//! - `_ferry/quarantine/<source>/<stream>/dt=.../...parquet`: rejected rows
//!   with the reason (`ferry.quarantine`).

pub mod durable;
pub mod json;
pub mod land;
pub mod layout;
pub mod lease;
pub mod log;
pub mod remote;
pub mod schema;
pub mod tables;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3ConfigKey;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use url::Url;

pub use land::{LandReport, Lander, Rejected};
pub use layout::{RunId, StreamRef};

use crate::error::{Error, Result};
use crate::project::{LakeConfig, Secret};

/// The lake: one object store, rooted at the lake's folder.
#[derive(Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    /// Where it is, for messages (never contains a secret).
    location: String,
}

impl fmt::Debug for Lake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lake")
            .field("location", &self.location)
            .finish()
    }
}

impl Lake {
    /// Open the lake a project's config names. Relative paths resolve against
    /// `base` (the project folder).
    pub fn open(config: &LakeConfig, base: &Path) -> Result<Lake> {
        Lake::from_url(&config.url, base, &config.options)
    }

    /// A lake that lives in memory (for tests and dry runs).
    pub fn memory() -> Lake {
        Lake {
            store: Arc::new(InMemory::new()),
            location: "memory://".into(),
        }
    }

    /// A lake over any object store (for embedding ferry, and for tests that
    /// inject failures). `location` is only used in messages.
    pub fn from_store(store: Arc<dyn ObjectStore>, location: impl Into<String>) -> Lake {
        Lake {
            store,
            location: location.into(),
        }
    }

    /// Build a lake from a path or URL with object store options.
    pub fn from_url(url: &str, base: &Path, options: &BTreeMap<String, Secret>) -> Result<Lake> {
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(Error::LakeUrl {
                url: url.into(),
                message: "empty: use a folder such as \"lake\" or a URL such as s3://bucket/prefix"
                    .into(),
            });
        }
        if !trimmed.contains("://") {
            return Lake::local(&base.join(trimmed));
        }
        let parsed = Url::parse(trimmed).map_err(|e| Error::LakeUrl {
            url: url.into(),
            message: e.to_string(),
        })?;
        let prefix = parsed.path().trim_matches('/').to_string();
        let bad = |message: String| Error::LakeUrl {
            url: url.into(),
            message: redact(&message, options),
        };
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let path = parsed
                    .to_file_path()
                    .map_err(|_| bad("not a local file path".into()))?;
                return Lake::local(&path);
            }
            "memory" => Arc::new(InMemory::new()),
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(trimmed);
                for (k, v) in options {
                    let key = AmazonS3ConfigKey::from_str(k)
                        .map_err(|_| bad(format!("unknown S3 option {k:?} in [lake.options]")))?;
                    b = b.with_config(key, v.expose());
                }
                let conditional = b.get_config_value(&AmazonS3ConfigKey::ConditionalPut);
                if conditional.is_some_and(|c| c.trim().eq_ignore_ascii_case("disabled")) {
                    return Err(bad(
                        "aws_conditional_put is \"disabled\": ferry's write-once files, Delta \
                         commits and leases need conditional PUTs (If-None-Match, If-Match); \
                         remove the setting, or use a store that supports them"
                            .into(),
                    ));
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "gs" => {
                let mut b =
                    object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(trimmed);
                for (k, v) in options {
                    let key = object_store::gcp::GoogleConfigKey::from_str(k)
                        .map_err(|_| bad(format!("unknown GCS option {k:?} in [lake.options]")))?;
                    b = b.with_config(key, v.expose());
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let mut b =
                    object_store::azure::MicrosoftAzureBuilder::from_env().with_url(trimmed);
                for (k, v) in options {
                    let key = object_store::azure::AzureConfigKey::from_str(k).map_err(|_| {
                        bad(format!("unknown Azure option {k:?} in [lake.options]"))
                    })?;
                    b = b.with_config(key, v.expose());
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}: use a folder path, file://, memory://, s3://, gs:// or az://"
                )));
            }
        };
        // Over a network, a conditional write's reply can be lost after it
        // was applied; `Confirming` tells that from another writer's.
        let store: Arc<dyn ObjectStore> = if parsed.scheme() == "memory" {
            store
        } else {
            Arc::new(remote::Confirming(store))
        };
        // The URL's host is the bucket; its path is the lake's prefix in it.
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix.as_str()))
        };
        Ok(Lake {
            store,
            location: strip_url_credentials(&parsed),
        })
    }

    fn local(path: &Path) -> Result<Lake> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let root = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let store =
            durable::DurableLocal::new(LocalFileSystem::new_with_prefix(&root)?, root.clone());
        Ok(Lake {
            store: Arc::new(store),
            location: root.display().to_string(),
        })
    }

    /// The object store, rooted at the lake.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where the lake is, fit for messages.
    pub fn location(&self) -> &str {
        &self.location
    }
}

/// Drop user:password from a URL before it goes into a message.
fn strip_url_credentials(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Replace any secret value that a library echoed into a message.
fn redact(message: &str, options: &BTreeMap<String, Secret>) -> String {
    let mut out = message.to_string();
    for v in options.values() {
        if v.expose().len() >= 4 {
            out = out.replace(v.expose(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::path::Path as ObjPath;

    fn none() -> BTreeMap<String, Secret> {
        BTreeMap::new()
    }

    #[tokio::test]
    async fn relative_path_resolves_against_project_dir() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::from_url("lake", dir.path(), &none()).unwrap();
        lake.store()
            .put(&ObjPath::from("raw/a.txt"), "x".into())
            .await
            .unwrap();
        assert!(dir.path().join("lake/raw/a.txt").exists());
    }

    #[tokio::test]
    async fn file_url_and_absolute_path_are_the_same_place() {
        let dir = tempfile::tempdir().unwrap();
        let abs = dir.path().join("l");
        let a = Lake::from_url(abs.to_str().unwrap(), Path::new("/nowhere"), &none()).unwrap();
        a.store()
            .put(&ObjPath::from("k"), "v".into())
            .await
            .unwrap();
        let url = Url::from_file_path(&abs).unwrap().to_string();
        let b = Lake::from_url(&url, Path::new("/nowhere"), &none()).unwrap();
        let got = b.store().get(&ObjPath::from("k")).await.unwrap();
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"v");
    }

    #[test]
    fn cloud_urls_build_stores_without_network() {
        let opts = BTreeMap::from([
            ("aws_region".to_string(), Secret::new("eu-west-1")),
            ("aws_access_key_id".to_string(), Secret::new("AKIAEXAMPLE")),
            (
                "aws_secret_access_key".to_string(),
                Secret::new("very-secret-key"),
            ),
        ]);
        let lake = Lake::from_url("s3://bucket/some/prefix", Path::new("."), &opts).unwrap();
        assert_eq!(lake.location(), "s3://bucket/some/prefix");
        assert!(!format!("{lake:?}").contains("very-secret-key"));
        Lake::from_url("memory://", Path::new("."), &none()).unwrap();
    }

    #[test]
    fn bad_urls_are_explained() {
        let err = Lake::from_url("ftp://host/x", Path::new("."), &none()).unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        let opts = BTreeMap::from([("aws_bogus_option".to_string(), Secret::new("zzzz-secret"))]);
        let err = Lake::from_url("s3://b", Path::new("."), &opts).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("aws_bogus_option") && !msg.contains("zzzz-secret"),
            "{msg}"
        );
        assert!(Lake::from_url("  ", Path::new("."), &none()).is_err());
        let opts = BTreeMap::from([("aws_conditional_put".to_string(), Secret::new("disabled"))]);
        let err = Lake::from_url("s3://b", Path::new("."), &opts).unwrap_err();
        assert!(err.to_string().contains("need conditional PUTs"), "{err}");
    }
}
