//! The descriptor directory as the durable copy of what the admin API
//! manages: `NAME.binpb` holds a set, `NAME.upstream.json` the upstream
//! uploaded with it, and `upstreams.json` the upstreams managed through the
//! admin API. Every write is atomic (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old file or the new one; temp files are
//! dot-files, which loading ignores.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::DescriptorSet;

/// The file of admin-managed upstreams in the descriptor directory.
const UPSTREAMS_FILE: &str = "upstreams.json";
/// With `registry.store: redis`: the generation of the shared registry this
/// copy is of (highest wins when Redis is re-seeded).
const GENERATION_FILE: &str = "registry-generation";

/// The descriptor directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A set read from the directory, with the upstream uploaded with it.
#[derive(Debug, Clone)]
pub struct StoredSet {
    pub set: DescriptorSet,
    pub upstream: Option<String>,
}

/// Where a package, service or uploaded set is served, as managed through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSetting {
    /// `http://host:port` (h2c) or `https://host:port` (TLS).
    pub url: String,
    /// Deadline for each call. Default 30s.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

/// The sidecar of a set: the upstream of the packages it brings.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetSidecar {
    upstream: String,
}

/// Refuses names that could leave the directory or hide a file:
/// 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with a dot, no `..`.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name: use 1 to 128 letters, digits, `.`, `_` or `-`, not starting with `.`, without `..`"
        ))
    }
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every set in the directory with its upstream, in name order.
    pub fn read_sets(&self) -> io::Result<Vec<StoredSet>> {
        DescriptorSet::read_dir(&self.dir)?
            .into_iter()
            .map(|set| {
                let sidecar = self.dir.join(sidecar_name(&set.name));
                let upstream = match read_json::<SetSidecar>(&sidecar)? {
                    Some(sidecar) => Some(sidecar.upstream),
                    None => None,
                };
                Ok(StoredSet { set, upstream })
            })
            .collect()
    }

    /// The upstreams managed through the admin API.
    pub fn read_upstreams(&self) -> io::Result<BTreeMap<String, UpstreamSetting>> {
        Ok(read_json(&self.dir.join(UPSTREAMS_FILE))?.unwrap_or_default())
    }

    /// Writes a set and its sidecar (the sidecar first: the set is what
    /// makes the change visible to a reload).
    pub fn write_set(&self, name: &str, bytes: &Bytes, upstream: Option<&str>) -> io::Result<()> {
        let sidecar = self.dir.join(sidecar_name(name));
        match upstream {
            Some(upstream) => {
                let json = serde_json::to_vec_pretty(&SetSidecar {
                    upstream: upstream.to_owned(),
                })
                .map_err(io::Error::other)?;
                write_atomic(&sidecar, &json)?;
            }
            None => remove_if_present(&sidecar)?,
        }
        write_atomic(&self.dir.join(format!("{name}.binpb")), bytes)
    }

    /// Removes a set (every file of that name) and then its sidecar.
    pub fn remove_set(&self, name: &str) -> io::Result<()> {
        for extension in ["binpb", "pb", "desc"] {
            remove_if_present(&self.dir.join(format!("{name}.{extension}")))?;
        }
        remove_if_present(&self.dir.join(sidecar_name(name)))?;
        sync_dir(&self.dir)
    }

    /// The generation of the shared registry this directory is a copy of; 0 when none.
    pub fn read_generation(&self) -> io::Result<u64> {
        match fs::read_to_string(self.dir.join(GENERATION_FILE)) {
            Ok(text) => text.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: not a generation number",
                        self.dir.join(GENERATION_FILE).display()
                    ),
                )
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(err) => Err(err),
        }
    }

    pub fn write_generation(&self, generation: u64) -> io::Result<()> {
        write_atomic(
            &self.dir.join(GENERATION_FILE),
            generation.to_string().as_bytes(),
        )
    }

    pub fn write_upstreams(&self, upstreams: &BTreeMap<String, UpstreamSetting>) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(upstreams).map_err(io::Error::other)?;
        write_atomic(&self.dir.join(UPSTREAMS_FILE), &json)
    }
}

fn sidecar_name(set: &str) -> String {
    format!("{set}.upstream.json")
}

/// `None` when the file does not exist; invalid JSON names the file.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {err}", path.display()),
        )
    })
}

/// Temp file in the same directory (a dot-file), fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{file_name}.{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    sync_dir(dir)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            "..",
            "a..b",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["acme.orders.v3", "team_a-1", "x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }
}
