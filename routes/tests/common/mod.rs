//! What the validation tests share: a refused file's errors as `line:col: message`, and
//! the files routes.yaml names, from memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tollgate_routes::{parse, parse_with_files, FileSource};

/// Every error for `text`, parsed as `routes.yaml`; panics if the file is accepted.
pub fn errors(text: &str) -> Vec<String> {
    match parse("routes.yaml", text) {
        Ok(_) => panic!("expected errors, the config was accepted"),
        Err(errors) => errors
            .iter()
            .map(|e| {
                assert_eq!(e.file, "routes.yaml");
                format!("{}:{}: {}", e.line, e.column, e.message)
            })
            .collect(),
    }
}

/// Every error for `text`, parsed as `routes.yaml` reading the files it names from `files`;
/// panics if the file is accepted.
#[allow(dead_code)] // only the crates that read files use it
pub fn errors_with_files(text: &str, files: &Files) -> Vec<String> {
    match parse_with_files("routes.yaml", text, files) {
        Ok(_) => panic!("expected errors, the config was accepted"),
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect(),
    }
}

/// Asserts that one of `text`'s errors stands at `at` (`"LINE:COL:"`) and mentions `contains`.
pub fn assert_error_at(text: &str, at: &str, contains: &str) {
    let errors = errors(text);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(at) && e.contains(contains)),
        "no error at {at} containing {contains:?}; got {errors:#?}"
    );
}

/// Files by the path routes.yaml names them with; any other path does not exist.
#[allow(dead_code)] // only the crates that read files use it
pub struct Files(BTreeMap<PathBuf, Vec<u8>>);

impl Files {
    #[allow(dead_code)]
    pub fn new(files: &[(&str, &[u8])]) -> Self {
        Files(
            files
                .iter()
                .map(|(path, bytes)| (PathBuf::from(path), bytes.to_vec()))
                .collect(),
        )
    }
}

impl FileSource for Files {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}
