//! Reading a routes.yaml from disk: the one loader every service calls, so that each reads
//! the file, and names it in its errors, the same way.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::{Certificates, ConfigErrors, FileSource, RoutesConfig};

/// Why a routes.yaml could not be loaded; whoever asked keeps what it had. Written as one
/// line per problem, each `file:line:col: message` for an invalid file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// A configuration file that could not be read, named.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ReadError {
    pub path: String,
    pub source: std::io::Error,
}

/// Reads and validates the routes.yaml at `path`. The files it names are not read: the
/// sidecars use none of them (see [`crate::parse`]).
pub fn load(path: &Path) -> Result<RoutesConfig, LoadError> {
    let text = read_text(path)?;
    crate::parse(&path.display().to_string(), &text).map_err(LoadError::Invalid)
}

/// Reads and validates the routes.yaml at `path` and, through `files`, every certificate,
/// key and CA bundle it names (see [`crate::parse_with_files`]).
pub fn load_with_files(
    path: &Path,
    files: &dyn FileSource,
) -> Result<(RoutesConfig, Certificates), LoadError> {
    let text = read_text(path)?;
    crate::parse_with_files(&path.display().to_string(), &text, files).map_err(LoadError::Invalid)
}

/// The text of the configuration file at `path`.
pub fn read_text(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.display().to_string(),
        source,
    })
}

/// The files a routes.yaml names, read relative to its directory, each remembered: what a
/// service that serves them watches for changes.
#[derive(Debug)]
pub struct FilesBeside {
    base: PathBuf,
    read: Mutex<Vec<PathBuf>>,
}

impl FilesBeside {
    /// The files beside the routes.yaml at `routes`.
    pub fn of(routes: &Path) -> Self {
        // The directory of the path as given, not of a symlink's target: a ConfigMap projects
        // `routes.yaml` and `cert.pem` side by side as links into the same `..data`.
        let base = match routes.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        FilesBeside {
            base,
            read: Mutex::new(Vec::new()),
        }
    }

    /// The files asked for so far, resolved, in the order they were asked for, including
    /// those that could not be read.
    pub fn read_so_far(&self) -> Vec<PathBuf> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl FileSource for FilesBeside {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let resolved = self.base.join(path);
        let result = std::fs::read(&resolved);
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(resolved.clone());
        // Name the resolved path, so a relative one says where it was looked for.
        result.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", resolved.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_a_read_error_naming_it() {
        let error = load(Path::new("/nonexistent/routes.yaml")).expect_err("no such file");
        assert!(matches!(error, LoadError::Read(_)));
        assert!(error
            .to_string()
            .starts_with("cannot read /nonexistent/routes.yaml: "));
    }

    #[test]
    fn a_named_file_is_read_beside_routes_yaml_and_remembered_even_when_missing() {
        let files = FilesBeside::of(Path::new("/etc/tollgate/routes.yaml"));
        let error = files.read(Path::new("certs/gw.pem")).expect_err("absent");
        assert!(error
            .to_string()
            .starts_with("/etc/tollgate/certs/gw.pem: "));
        assert_eq!(
            files.read_so_far(),
            vec![PathBuf::from("/etc/tollgate/certs/gw.pem")]
        );
    }
}
