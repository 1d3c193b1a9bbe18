//! The sidecars' hand-written gRPC server: `grpc-timeout` parsing and the reading of a
//! unary request's one message (length prefix, compressed flag, a body in fragments, the
//! size limit).
//!
//! Input: the first byte's low bits say how long the `grpc-timeout` value is (taken from
//! the bytes after it); the rest is a request body, cut into fragments wherever a 0xF0
//! byte stands (the byte itself dropped), and a fragment that is exactly 0xF1 0xNN adds
//! NN × 64 KiB of zeros (up to [`MAX_ZEROS`] in all), so that bodies beyond the 4 MiB limit
//! are reached too.
//!
//! Properties: nothing panics; a timeout read is the value's digits in its unit, and the
//! value is 1 to 8 ASCII digits and a unit letter; the message read from fragments is the
//! message `unframe` reads from the whole body, and what it returns is the body without
//! its 5-byte header, whose length field matches; a body over the limit is refused with
//! RESOURCE_EXHAUSTED.
#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::StreamBody;
use libfuzzer_sys::fuzz_target;
use tollgate_sidecar::grpc::wire::{grpc_timeout, read_message, unframe, MAX_REQUEST_MESSAGE};

const FRAME_HEADER: usize = 5;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn check_timeout(value: &[u8]) {
    let Ok(header) = http::HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("grpc-timeout", header);
    let Some(timeout) = grpc_timeout(&headers) else {
        return;
    };
    let (&unit, digits) = value.split_last().expect("a timeout has a unit");
    assert!((1..=8).contains(&digits.len()), "{value:?}");
    assert!(digits.iter().all(u8::is_ascii_digit), "{value:?}");
    let amount: u64 = std::str::from_utf8(digits).unwrap().parse().unwrap();
    let expected = match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        other => panic!("a timeout read with unit {other:?}"),
    };
    assert_eq!(timeout, expected);
}

/// Zeros the 0xF1 fragments may add in all: past the limit by one fragment's worth. More
/// would only make the harness itself slow (an input of 900 bytes once asked for 429 MiB,
/// which took 2.4 s to allocate and timed out on a loaded machine), not reach new code: the
/// reader stops at the limit.
const MAX_ZEROS: usize = FRAME_HEADER + MAX_REQUEST_MESSAGE + 255 * 64 * 1024;

/// The body's fragments, as the client's DATA frames would bring them.
fn fragments(body: &[u8]) -> Vec<Bytes> {
    let mut zeros = 0;
    body.split(|&b| b == 0xF0)
        .map(|fragment| match fragment {
            [0xF1, n] => {
                let added = (usize::from(*n) * 64 * 1024).min(MAX_ZEROS - zeros);
                zeros += added;
                Bytes::from(vec![0; added])
            }
            other => Bytes::copy_from_slice(other),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let timeout_len = usize::from(first & 0x0F).min(rest.len());
    let (timeout, body) = rest.split_at(timeout_len);
    check_timeout(timeout);

    let fragments = fragments(body);
    let whole: Bytes = fragments.concat().into();
    let stream = futures_util::stream::iter(
        fragments
            .into_iter()
            .map(|f| Ok::<_, Infallible>(Frame::data(f))),
    );
    let read = runtime().block_on(read_message(StreamBody::new(stream)));
    if whole.len() > FRAME_HEADER + MAX_REQUEST_MESSAGE {
        let status = read.expect_err("a body over the limit is refused");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        return;
    }
    match (read, unframe(whole.clone())) {
        (Ok(message), Ok(unframed)) => {
            assert_eq!(message, unframed);
            assert_eq!(whole[0], 0, "only uncompressed messages are read");
            let declared = u32::from_be_bytes([whole[1], whole[2], whole[3], whole[4]]);
            assert_eq!(declared as usize, message.len());
            assert_eq!(&whole[FRAME_HEADER..], &message[..]);
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.code(), b.code());
            assert_eq!(a.message(), b.message());
        }
        (a, b) => panic!("fragments read {a:?}, the whole body {b:?}"),
    }
});
