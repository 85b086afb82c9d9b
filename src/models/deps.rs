//! `ferry deps`: install the packages a dbt project lists in `packages.yml`
//! (or `dependencies.yml`) into `dbt_packages/`, pinned by `package-lock.yml`.
//!
//! - `local: <path>`: copied from the path (relative to the project).
//! - `git: <url>` with `revision` (tag, branch or commit) and
//!   `subdirectory`: cloned with the `git` command (which brings the user's
//!   own credentials and SSH setup, as dbt's does), checked out, and the
//!   commit recorded in the lock.
//! - `package: org/name` (dbt Hub): ferry does not download from the Hub; a
//!   package already in `dbt_packages/` (from `dbt deps`) is kept, otherwise
//!   the error says to run `dbt deps` or to list it as a `git:` package.
//!
//! Packages' own `packages.yml` are followed (transitive dependencies).
//! `package-lock.yml` records each package's resolved commit; a later
//! `ferry deps` installs exactly those until `--upgrade`. Values may use
//! `{{ env_var('NAME') }}` (a token in a git URL); the lock keeps the text
//! as written, so a token never lands in a file, and output masks it.
//!
//! Each package is first copied beside its place and then renamed into it,
//! so an interrupted install never leaves half a package.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value as Yaml;

use crate::error::{Error, Result};

/// The lock file dbt (1.7+) and ferry write beside `packages.yml`.
pub const LOCK_FILE: &str = "package-lock.yml";
/// Where packages are installed.
pub const PACKAGES_DIR: &str = "dbt_packages";

/// One entry of `packages:`, as written (before `env_var` is rendered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Spec {
    Local {
        local: String,
    },
    Git {
        git: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subdirectory: Option<String>,
        #[serde(
            default,
            rename = "warn-unpinned",
            skip_serializing_if = "Option::is_none"
        )]
        warn_unpinned: Option<bool>,
    },
    Hub {
        package: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<Yaml>,
    },
}

impl Spec {
    /// What identifies the entry across `packages.yml` and the lock.
    fn key(&self) -> String {
        match self {
            Spec::Local { local } => format!("local:{local}"),
            Spec::Git {
                git, subdirectory, ..
            } => format!("git:{git}#{}", subdirectory.as_deref().unwrap_or("")),
            Spec::Hub { package, .. } => format!("hub:{package}"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct PackagesFile {
    #[serde(default)]
    packages: Vec<Yaml>,
}

/// One locked package: the entry with its revision resolved, and its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Locked {
    #[serde(flatten)]
    pub spec: Spec,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LockFile {
    #[serde(default)]
    packages: Vec<Locked>,
}

/// What `ferry deps` did to one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    /// `local ../path`, `git <url>@<commit>`, `hub org/name (kept)`.
    pub from: String,
}

/// The packages file of a project: `packages.yml`, else `dependencies.yml`.
fn packages_file(dir: &Path) -> Option<PathBuf> {
    ["packages.yml", "dependencies.yml"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

fn read_specs(file: &Path, shown: &str) -> Result<Vec<Spec>> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::user_file(file, e))?;
    let parsed: PackagesFile = serde_yaml_ng::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        Error::Input(format!("{shown}{at}: {e}"))
    })?;
    parsed
        .packages
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            serde_yaml_ng::from_value::<Spec>(entry.clone()).map_err(|_| {
                Error::Input(format!(
                    "{shown}: packages[{i}] is not a package: write `- local: <path>`, \
                     `- git: <url>` (with `revision:` and optionally `subdirectory:`) or \
                     `- package: org/name` with `version:`"
                ))
            })
        })
        .collect()
}

/// `{{ env_var('NAME') }}` / `{{ env_var('NAME', 'default') }}` in a value.
fn render_env(text: &str, shown: &str) -> Result<String> {
    if !text.contains("{{") {
        return Ok(text.to_string());
    }
    let mut env = minijinja::Environment::new();
    env.add_global(
        "env_var",
        super::render::env_var_function(Default::default()),
    );
    env.render_str(text, ())
        .map_err(|e| Error::Input(format!("{shown}: {e}")))
}

/// A URL for output: any user info (a token) replaced by `***`.
fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn git(args: &[&str], cwd: Option<&Path>, shown_url: &str) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null());
    if let Some(c) = cwd {
        cmd.current_dir(c);
    }
    let out = cmd.output().map_err(|e| {
        Error::Project(format!(
            "git packages need the `git` command ({e}): install git, or list the package as `local:`"
        ))
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // git echoes the URL it was given; keep any token out of the message.
        let mut msg = stderr.trim().to_string();
        for a in args {
            if a.contains('@') && a.contains("://") {
                msg = msg.replace(a, &masked(a));
            }
        }
        return Err(Error::Input(format!(
            "git {} failed for {shown_url}: {msg}",
            args.first().unwrap_or(&"")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The `name:` in a package's `dbt_project.yml`.
pub fn package_name(dir: &Path) -> Result<String> {
    #[derive(Deserialize)]
    struct P {
        name: String,
    }
    let file = dir.join("dbt_project.yml");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        Error::Input(format!(
            "{} is not a dbt package: no dbt_project.yml ({e})",
            dir.display()
        ))
    })?;
    let p: P = serde_yaml_ng::from_str(&text)
        .map_err(|e| Error::Input(format!("{}: {e}", file.display())))?;
    Ok(p.name)
}

/// A scratch folder removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let name = entry.file_name();
        if name == ".git" || name == PACKAGES_DIR || name == "target" {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

/// Put the package at `src` into `packages/<name>`: copied beside it, then
/// swapped in, so the folder is either the old package or the new one.
fn place(src: &Path, packages: &Path) -> Result<String> {
    let name = package_name(src)?;
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::Input(format!(
            "{}: package name {name:?} cannot be a folder name",
            src.display()
        )));
    }
    std::fs::create_dir_all(packages).map_err(|e| Error::io(packages, e))?;
    let staging = packages.join(format!(".{name}.installing"));
    let _ = std::fs::remove_dir_all(&staging);
    copy_tree(src, &staging)?;
    let dest = packages.join(&name);
    let old = packages.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(&dest, &old).map_err(|e| Error::io(&dest, e))?;
    }
    std::fs::rename(&staging, &dest).map_err(|e| Error::io(&staging, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(name)
}

/// Install one entry; `base` is the folder its relative paths start from.
fn install_one(
    spec: &Spec,
    base: &Path,
    packages: &Path,
    pinned: Option<&Locked>,
    shown: &str,
) -> Result<(Locked, PathBuf, String)> {
    match spec {
        Spec::Local { local } => {
            let path = render_env(local, shown)?;
            let src = base.join(&path);
            if !src.is_dir() {
                return Err(Error::Input(format!(
                    "{shown}: local package {path}: no such folder ({})",
                    src.display()
                )));
            }
            let name = place(&src, packages)?;
            Ok((
                Locked {
                    spec: spec.clone(),
                    name: name.clone(),
                },
                src,
                format!("local {path}"),
            ))
        }
        Spec::Git {
            git: url,
            revision,
            subdirectory,
            warn_unpinned,
        } => {
            let real = render_env(url, shown)?;
            let shown_url = masked(&real);
            let revision = pinned
                .and_then(|l| match &l.spec {
                    Spec::Git { revision, .. } => revision.clone(),
                    _ => None,
                })
                .or_else(|| revision.clone());
            if revision.is_none() && *warn_unpinned != Some(false) {
                eprintln!(
                    "warning: {shown_url} has no revision: the default branch's head is installed \
                     and locked; pin a tag or commit with `revision:`"
                );
            }
            let tmp = Scratch(
                packages
                    .parent()
                    .unwrap_or(packages)
                    .join(format!(".ferry-deps-{}", uuid::Uuid::now_v7())),
            );
            let clone = tmp.0.join("clone");
            let clone_s = clone.to_string_lossy().to_string();
            git(&["clone", "--quiet", &real, &clone_s], None, &shown_url)?;
            if let Some(rev) = &revision {
                git(
                    &[
                        "-c",
                        "advice.detachedHead=false",
                        "checkout",
                        "--quiet",
                        rev,
                    ],
                    Some(&clone),
                    &shown_url,
                )
                .map_err(|e| {
                    Error::Input(format!(
                        "{shown}: revision {rev} of {shown_url} cannot be checked out ({e}); \
                         check the tag, branch or commit"
                    ))
                })?;
            }
            let commit = git(&["rev-parse", "HEAD"], Some(&clone), &shown_url)?;
            let src = match subdirectory {
                Some(sub) => clone.join(sub),
                None => clone.clone(),
            };
            if !src.is_dir() {
                return Err(Error::Input(format!(
                    "{shown}: {shown_url} has no subdirectory {}",
                    subdirectory.as_deref().unwrap_or("")
                )));
            }
            let name = place(&src, packages)?;
            // Its own packages.yml is read from the installed copy.
            let installed = packages.join(&name);
            Ok((
                Locked {
                    spec: Spec::Git {
                        git: url.clone(),
                        revision: Some(commit.clone()),
                        subdirectory: subdirectory.clone(),
                        warn_unpinned: None,
                    },
                    name,
                },
                installed,
                format!("git {shown_url}@{}", &commit[..commit.len().min(12)]),
            ))
        }
        Spec::Hub { package, version } => {
            let name = package.rsplit('/').next().unwrap_or(package).to_string();
            let dest = packages.join(&name);
            if dest.join("dbt_project.yml").is_file() {
                return Ok((
                    Locked {
                        spec: spec.clone(),
                        name: name.clone(),
                    },
                    dest,
                    format!("hub {package} (kept: installed by dbt deps)"),
                ));
            }
            let version = version
                .as_ref()
                .and_then(|v| serde_yaml_ng::to_string(v).ok())
                .map(|v| v.trim().replace('\n', " "))
                .unwrap_or_else(|| "latest".into());
            Err(Error::Input(format!(
                "{shown}: {package} ({version}) is a dbt Hub package, which ferry does not download. \
                 Either run `dbt deps` once (ferry runs what it installs in dbt_packages/), or list \
                 it by its repository: `- git: https://github.com/{package_repo}.git` with \
                 `revision: <tag>`",
                package_repo = package.replace('_', "-")
            )))
        }
    }
}

/// Install the project's packages. `upgrade` ignores the lock.
pub fn install(dir: &Path, upgrade: bool) -> Result<Vec<Installed>> {
    let Some(file) = packages_file(dir) else {
        return Ok(Vec::new());
    };
    let shown = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock_path = dir.join(LOCK_FILE);
    let lock: LockFile = if upgrade {
        LockFile::default()
    } else {
        match std::fs::read_to_string(&lock_path) {
            Ok(t) => serde_yaml_ng::from_str(&t).map_err(|e| {
                Error::Input(format!(
                    "{LOCK_FILE}: {e}; delete it or run `ferry deps --upgrade`"
                ))
            })?,
            Err(_) => LockFile::default(),
        }
    };
    let pins: BTreeMap<String, &Locked> = lock.packages.iter().map(|l| (l.spec.key(), l)).collect();
    let packages = dir.join(PACKAGES_DIR);
    let mut todo: Vec<(Spec, PathBuf, String)> = read_specs(&file, &shown)?
        .into_iter()
        .map(|s| (s, dir.to_path_buf(), shown.clone()))
        .collect();
    todo.reverse();
    let mut done: Vec<Installed> = Vec::new();
    let mut locked: Vec<Locked> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    while let Some((spec, base, origin)) = todo.pop() {
        if seen.contains_key(&spec.key()) {
            continue;
        }
        let (lock_entry, installed_at, from) = install_one(
            &spec,
            &base,
            &packages,
            pins.get(&spec.key()).copied(),
            &origin,
        )?;
        if let Some(first) = seen.values().find(|n| **n == lock_entry.name) {
            return Err(Error::Input(format!(
                "{origin}: two packages are named {first}; keep one"
            )));
        }
        seen.insert(spec.key(), lock_entry.name.clone());
        println!("Installed {} from {from}", lock_entry.name);
        done.push(Installed {
            name: lock_entry.name.clone(),
            from,
        });
        // Transitive: the package's own packages.yml, relative to it.
        if let Some(own) = packages_file(&installed_at) {
            let shown = format!(
                "{}/{}",
                lock_entry.name,
                own.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            let base = match &spec {
                Spec::Local { .. } => installed_at.clone(),
                _ => packages.join(&lock_entry.name),
            };
            for s in read_specs(&own, &shown)?.into_iter().rev() {
                todo.push((s, base.clone(), shown.clone()));
            }
        }
        locked.push(lock_entry);
    }
    let text = serde_yaml_ng::to_string(&LockFile { packages: locked })
        .map_err(|e| Error::Internal(format!("package lock: {e}")))?;
    write_atomic(&lock_path, text.as_bytes())?;
    Ok(done)
}

/// Write `path` whole or not at all: a temporary file, fsynced, renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
