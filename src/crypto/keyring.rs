//! Where ringfence's three long-lived secrets come from.
//!
//! Each secret (`kek`, `blind_index_key`, `code_pepper`) is taken, in order, from the
//! environment variable `RINGFENCE_<NAME>` (base64 of 32 bytes), from the file named by
//! `RINGFENCE_<NAME>_FILE`, or from `<data dir>/secrets/<name>`. When none exists and
//! generation is allowed, a fresh random secret is written to the data dir with mode
//! 0600. Production deployments pass them in from a secret manager instead.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::{BlindIndexer, CodeHasher, Kek, KeyBytes};

/// The secrets a running service holds.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub kek: Kek,
    pub blind: BlindIndexer,
    pub codes: CodeHasher,
}

/// Where one secret was found, for the start-up report (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    Generated(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(v) => write!(f, "environment variable {v}"),
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Generated(p) => write!(f, "newly generated file {}", p.display()),
        }
    }
}

const NAMES: [&str; 3] = ["kek", "blind_index_key", "code_pepper"];

impl Keyring {
    /// Loads the three secrets, generating missing ones into `data_dir` when allowed.
    pub fn load(
        data_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        allow_generate: bool,
    ) -> anyhow::Result<(Self, Vec<(&'static str, SecretSource)>)> {
        let mut keys = Vec::with_capacity(3);
        let mut report = Vec::with_capacity(3);
        for name in NAMES {
            let (k, src) = load_one(name, data_dir, env, allow_generate)?;
            keys.push(k);
            report.push((name, src));
        }
        let pepper = keys.pop().expect("three keys");
        let blind = keys.pop().expect("three keys");
        let kek = keys.pop().expect("three keys");
        Ok((
            Self {
                kek: Kek::new(kek),
                blind: BlindIndexer::new(blind),
                codes: CodeHasher::new(pepper),
            },
            report,
        ))
    }

    /// Fresh random secrets held only in memory (tests, `ringfence demo`).
    pub fn ephemeral() -> Self {
        Self {
            kek: Kek::new(KeyBytes::generate()),
            blind: BlindIndexer::new(KeyBytes::generate()),
            codes: CodeHasher::new(KeyBytes::generate()),
        }
    }
}

fn decode(name: &str, text: &str, origin: &str) -> anyhow::Result<KeyBytes> {
    let raw = B64
        .decode(text.trim())
        .map_err(|_| anyhow::anyhow!("{name} from {origin} is not valid base64"))?;
    let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{name} from {origin} must be 32 bytes (base64), got {}",
            raw.len()
        )
    })?;
    Ok(KeyBytes::from_bytes(bytes))
}

fn load_one(
    name: &str,
    data_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    allow_generate: bool,
) -> anyhow::Result<(KeyBytes, SecretSource)> {
    let var = format!("RINGFENCE_{}", name.to_ascii_uppercase());
    if let Some(v) = env(&var) {
        return Ok((decode(name, &v, &var)?, SecretSource::Env(var)));
    }
    let file_var = format!("{var}_FILE");
    if let Some(p) = env(&file_var) {
        let path = PathBuf::from(p);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{file_var}: cannot read {}: {e}", path.display()))?;
        return Ok((decode(name, &text, &file_var)?, SecretSource::File(path)));
    }
    let path = data_dir.join("secrets").join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((
            decode(name, &text, &path.display().to_string())?,
            SecretSource::File(path),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && allow_generate => {
            let key = KeyBytes::generate();
            write_secret(&path, &B64.encode(key.expose()))?;
            Ok((key, SecretSource::Generated(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "secret {name} not found: set {var}, {file_var}, or create {}",
            path.display()
        ),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
}

fn write_secret(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("secret path has a parent");
    std::fs::create_dir_all(dir)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_private_permissions_then_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let none = |_: &str| None;
        let (a, report) = Keyring::load(dir.path(), &none, true).unwrap();
        assert!(report
            .iter()
            .all(|(_, s)| matches!(s, SecretSource::Generated(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secrets/kek"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, report) = Keyring::load(dir.path(), &none, false).unwrap();
        assert!(report
            .iter()
            .all(|(_, s)| matches!(s, SecretSource::File(_))));
        assert_eq!(a.blind.index("+15551234567"), b.blind.index("+15551234567"));
    }

    #[test]
    fn env_wins_and_bad_values_name_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let good = B64.encode([7u8; 32]);
        let env = |k: &str| match k {
            "RINGFENCE_KEK" => Some(good.clone()),
            "RINGFENCE_BLIND_INDEX_KEY" => Some("not base64!".into()),
            _ => None,
        };
        let err = Keyring::load(dir.path(), &env, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RINGFENCE_BLIND_INDEX_KEY"), "{err}");
        let none = |_: &str| None;
        let err = Keyring::load(dir.path(), &none, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RINGFENCE_KEK"), "{err}");
    }
}
