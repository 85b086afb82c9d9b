//! Secrets: values that must never be printed.
//!
//! `ferry.toml` refers to secrets as `${ENV_VAR}`; the value comes from the
//! environment, else from the git-ignored `secrets.toml` beside `ferry.toml`.
//! The resolved value lives in a [`Secret`], whose `Debug` and `Display` print
//! `***`, so it cannot leak through logs, errors or `{:?}` of a config.

use std::collections::BTreeMap;
use std::fmt;

/// A value that is never printed. Use [`Secret::expose`] at the one place that
/// hands it to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The plain value. Call this only to pass it to the library that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where `${VAR}` references are looked up: the process environment first,
/// then `secrets.toml`.
#[derive(Default)]
pub struct SecretSource {
    file: BTreeMap<String, String>,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource")
            .field("file_keys", &self.file.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretSource {
    pub fn new(file: BTreeMap<String, String>) -> Self {
        SecretSource { file }
    }

    fn lookup(&self, var: &str) -> Option<String> {
        std::env::var(var)
            .ok()
            .or_else(|| self.file.get(var).cloned())
    }

    /// Replace every `${VAR}` in `raw`. `$$` stands for a literal `$`.
    /// On failure returns a message naming the variable (never a value).
    pub fn interpolate(&self, raw: &str) -> Result<Secret, String> {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or_else(|| "unclosed `${`: write `${VAR_NAME}`".to_string())?;
                let var = &body[..end];
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "`${{{var}}}` is not a variable reference: names use letters, digits and _"
                    ));
                }
                let value = self.lookup(var).ok_or_else(|| {
                    format!(
                        "environment variable {var} is not set and secrets.toml has no {var}: \
                         export it or add `{var} = \"...\"` to secrets.toml"
                    )
                })?;
                out.push_str(&value);
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(Secret(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        let nested = Some(vec![s.clone()]);
        assert!(!format!("{nested:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn interpolates_from_file_when_env_is_missing() {
        let src = SecretSource::new(BTreeMap::from([(
            "FERRY_TEST_ONLY_IN_FILE_7".to_string(),
            "abc".to_string(),
        )]));
        let s = src
            .interpolate("key=${FERRY_TEST_ONLY_IN_FILE_7};cost=$$5")
            .unwrap();
        assert_eq!(s.expose(), "key=abc;cost=$5");
    }

    #[test]
    fn missing_variable_names_it_without_a_value() {
        let src = SecretSource::default();
        let err = src
            .interpolate("${FERRY_TEST_SURELY_UNSET_VAR}")
            .unwrap_err();
        assert!(err.contains("FERRY_TEST_SURELY_UNSET_VAR"), "{err}");
        assert!(src.interpolate("${bad-name}").is_err());
        assert!(src.interpolate("${OPEN").is_err());
    }
}
