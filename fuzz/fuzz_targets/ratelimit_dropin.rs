//! The drop-in rate-limit configuration (envoyproxy/ratelimit's format): the parser never
//! panics, and a tree it builds answers lookups without panicking. A NUL byte splits the
//! input into two files, so that what spans files (duplicate domains) is reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_ratelimit::limits::dropin::{parse, SourceFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files: Vec<SourceFile> = text
        .splitn(2, '\0')
        .enumerate()
        .map(|(i, text)| SourceFile {
            name: format!("config{i}.yaml"),
            text: text.to_string(),
        })
        .collect();
    let Ok(tree) = parse(&files) else {
        return;
    };
    // Descriptors made of the words of the input itself: the keys and values it configures.
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ':' || c == '"' || c == '\0')
        .filter(|w| !w.is_empty())
        .take(16)
        .collect();
    let domains: Vec<String> = tree.domains().map(str::to_string).collect();
    for domain in &domains {
        assert!(tree.has_domain(domain));
        for pair in words.chunks(2) {
            let entries: Vec<(&str, &str)> = words
                .windows(2)
                .map(|w| (w[0], w[1]))
                .take(pair.len() + 1)
                .collect();
            if let Some(found) = tree.find(domain, &entries) {
                assert!(found.counter_key.starts_with(domain.as_str()));
            }
        }
    }
});
