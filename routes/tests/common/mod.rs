//! What the validation tests share: a refused file's errors as `line:col: message`.

use tollgate_routes::parse;

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
