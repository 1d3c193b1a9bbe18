//! JWKS documents, as fetched from a `jwks_uri` or read from a `jwks_file` (both go
//! through `KeySet::parse_jwks`): parsing never panics; a set it accepts has a key, looks
//! keys up for every algorithm without panicking, and parses to the same set again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_ext_authz::jwks::{KeyMaterial, KeySet};
use tollgate_routes::policy::Algorithm;

fuzz_target!(|data: &[u8]| {
    let Ok(set) = KeySet::parse_jwks(data) else {
        return;
    };
    assert!(!set.is_empty());
    assert_eq!(set.len(), set.keys().len());
    let kids: Vec<Option<String>> = set.keys().iter().map(|k| k.kid.clone()).collect();
    for alg in Algorithm::ALL {
        let _ = set.find(None, alg);
        for kid in &kids {
            let _ = set.find(kid.as_deref(), alg);
        }
    }
    // Every accepted public key checks a signature without panicking (and refuses junk).
    for key in set.keys() {
        if let KeyMaterial::Public(public) = &key.material {
            for alg in Algorithm::ALL.into_iter().filter(|&alg| key.accepts(alg)) {
                assert!(!public.verify(alg, b"header.payload", &[0x5a; 64]));
            }
        }
    }
    let again = KeySet::parse_jwks(data).expect("a document parses twice the same way");
    assert_eq!(again.fingerprint(), set.fingerprint());
    assert_eq!(again.len(), set.len());
});
