//! API key files: entries into the model, and every refusal at its line and column.

use tollgate_routes::parse_keys;

const ACME: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const GLOBEX: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

fn errors(text: &str) -> Vec<String> {
    parse_keys("keys.yaml", text)
        .expect_err("refused")
        .iter()
        .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
        .collect()
}

#[test]
fn entries_parse_into_the_model() {
    let text = format!(
        "keys:\n  - {{consumer: acme, tier: premium, sha256: \"{ACME}\"}}\n  - {{consumer: globex, sha256: \"{}\", expires: 2027-01-01T00:00:00Z, attributes: {{plan: gold}}}}\n",
        GLOBEX.to_uppercase()
    );
    let keys = parse_keys("keys.yaml", &text).expect("valid");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].consumer, "acme");
    assert_eq!(keys[0].tier.as_deref(), Some("premium"));
    assert_eq!(keys[0].sha256[..2], [0x9f, 0x86]);
    assert_eq!(keys[0].expires, None);
    assert_eq!(keys[1].expires, Some(1_798_761_600));
    assert_eq!(keys[1].attributes["plan"], "gold");
    assert_eq!(
        keys[1].sha256[..2],
        [0x60, 0x30],
        "hex digits in either case"
    );
}

#[test]
fn plaintext_bad_hashes_duplicates_and_conflicting_tiers_are_refused_where_they_stand() {
    let text = format!(
        "keys:
  - {{consumer: acme, tier: premium, sha256: \"{ACME}\"}}
  - {{consumer: acme, tier: free, sha256: \"{GLOBEX}\"}}
  - {{consumer: initech, sha256: \"{ACME}\"}}
  - {{consumer: hooli, key: s3cret}}
  - {{consumer: umbrella, sha256: \"abc\"}}
  - {{consumer: wayne, sha256: \"{GLOBEX}0\"}}
  - {{consumer: stark}}
  - {{consumer: \"a b\", sha256: \"{}\", expires: soon}}
",
        "1".repeat(64)
    );
    let found = errors(&text);
    let expected = [
        "3:28: consumer \"acme\" has tier \"free\" here but \"premium\" on line 2",
        "4:33: the same key as line 2 (consumer \"acme\")",
        "5:28: plaintext keys are refused",
        "6:34: sha256 \"abc\" is not 64 hexadecimal digits",
        "7:31: sha256",
        "8:5: the key of consumer \"stark\" needs its sha256",
        "9:16: consumer \"a b\": expected printable ASCII",
        "9:108: expires \"soon\": expected an RFC 3339 time",
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (found, expected) in found.iter().zip(expected) {
        assert!(
            found.starts_with(expected),
            "{found} does not start with {expected}"
        );
    }
}

#[test]
fn an_unknown_field_is_refused_at_its_line() {
    let found = errors(&format!(
        "keys:\n  - {{consumer: acme, sha256: \"{ACME}\", teir: gold}}\n"
    ));
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("2:") && found[0].contains("unknown field `teir`"),
        "{found:?}"
    );
}
