//! Registry credentials from the files users already have: containers' `auth.json`
//! (`REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`) and Docker's
//! `config.json` (`DOCKER_CONFIG`, `~/.docker/config.json`), including credential helpers.
//!
//! Passwords never reach a log: [`Credentials`] has a redacted `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::RegistryError;

/// A username and password (or identity token) for one registry.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The auth files to consult, most specific first. An explicit file (flag or
/// `REGISTRY_AUTH_FILE`) replaces the defaults, as in skopeo.
pub fn auth_files(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return vec![PathBuf::from(p)];
    }
    let mut files = Vec::new();
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(run).join("containers/auth.json"));
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        files.push(PathBuf::from(dir).join("config.json"));
    } else if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".docker/config.json"));
    }
    files
}

/// Looks up credentials for `registry` (a `host[:port]`). `Ok(None)` means anonymous.
pub fn lookup(files: &[PathBuf], registry: &str) -> Result<Option<Credentials>, RegistryError> {
    for path in files {
        let raw = match std::fs::read(path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(RegistryError::AuthFile {
                    path: path.clone(),
                    source: source.into(),
                })
            }
        };
        let file: AuthFile = serde_json::from_slice(&raw).map_err(|e| RegistryError::AuthFile {
            path: path.clone(),
            source: e.into(),
        })?;
        if let Some(helper) = file.cred_helpers.get(registry) {
            return credential_helper(helper, registry).map(Some);
        }
        for (key, entry) in &file.auths {
            if normalize(key) == registry {
                return decode_entry(path, key, entry).map(Some);
            }
        }
        if let Some(store) = &file.creds_store {
            if let Ok(c) = credential_helper(store, registry) {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

/// `https://index.docker.io/v1/` and `host/path` keys both name a host.
fn normalize(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

fn decode_entry(path: &Path, key: &str, e: &AuthEntry) -> Result<Credentials, RegistryError> {
    let bad = |why: &str| RegistryError::AuthEntry {
        path: path.to_path_buf(),
        registry: key.into(),
        reason: why.into(),
    };
    if let Some(token) = &e.identitytoken {
        if !token.is_empty() {
            return Ok(Credentials {
                username: "<token>".into(),
                password: Zeroizing::new(token.clone()),
            });
        }
    }
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Ok(Credentials {
            username: u.clone(),
            password: Zeroizing::new(p.clone()),
        });
    }
    let auth = e
        .auth
        .as_deref()
        .ok_or_else(|| bad("the entry has neither `auth` nor `username`/`password`"))?;
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("`auth` is not valid base64"))?,
    );
    let text = std::str::from_utf8(&decoded).map_err(|_| bad("`auth` is not UTF-8"))?;
    let (u, p) = text
        .split_once(':')
        .ok_or_else(|| bad("`auth` is not `user:password`"))?;
    Ok(Credentials {
        username: u.into(),
        password: Zeroizing::new(p.into()),
    })
}

fn credential_helper(helper: &str, registry: &str) -> Result<Credentials, RegistryError> {
    let program = format!("docker-credential-{helper}");
    let fail = |reason: String| RegistryError::CredentialHelper {
        program: program.clone(),
        reason,
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(registry.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply {
        username: String,
        secret: String,
    }
    let stdout = Zeroizing::new(out.stdout);
    let r: Reply =
        serde_json::from_slice(&stdout).map_err(|e| fail(format!("unreadable reply: {e}")))?;
    Ok(Credentials {
        username: r.username,
        password: Zeroizing::new(r.secret),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_containers_auth_files_are_understood() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(
            &f,
            r#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYTpzcw=="},
                         "other.example":{"username":"u2","password":"p2"}}}"#,
        )
        .unwrap();
        let c = lookup(std::slice::from_ref(&f), "reg.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        let c = lookup(std::slice::from_ref(&f), "other.example")
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "u2");
        assert!(lookup(&[f], "nobody.example").unwrap().is_none());
        assert!(!format!("{c:?}").contains("p2"));
    }

    #[test]
    fn a_broken_auth_file_is_an_error_not_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, r#"{"auths":{"r.example":{"auth":"%%%"}}}"#).unwrap();
        assert!(lookup(&[f], "r.example").is_err());
    }
}
