//! The opening handshake: `Request::parse` and `validate_upgrade` (all four combinations
//! of the skip options) on the server side, `ClientHandshake::parse_response` on the
//! client side, over the same bytes.
//!
//! Input: byte 0 picks a cut point (for the prefix check), the rest is the HTTP head.
//! The client's nonce is fixed to RFC 6455's "the sample nonce", so a response carrying
//! `Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=` passes and the fuzzer can mutate
//! around a successful upgrade.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_codec::handshake::{
    self, ClientHandshake, ClientRequest, MAX_HEAD_LEN, Request, RequestParse, UpgradeChecks, validate_upgrade,
};

const NONCE: [u8; 16] = *b"the sample nonce";

fuzz_target!(|data: &[u8]| {
    let Some((&cut, head)) = data.split_first() else {
        return;
    };
    server_side(head, cut);
    client_side(head);
});

fn server_side(head: &[u8], cut: u8) {
    let (request, head_len) = match Request::parse(head) {
        Ok(RequestParse::Complete { request, head_len }) => (request, head_len),
        Ok(RequestParse::Incomplete) => {
            assert!(head.len() < MAX_HEAD_LEN, "{} bytes without a complete head should be too large", head.len());
            return;
        }
        Err(error) => {
            assert!(matches!(error.status(), 400 | 405 | 426 | 431));
            let response = error.response();
            assert!(response.starts_with(b"HTTP/1.1 4"));
            return;
        }
    };
    assert!(head_len <= head.len() && head_len <= MAX_HEAD_LEN);
    assert_eq!(request.raw()[..], head[..head_len]);
    assert!(head[..head_len].ends_with(b"\n"));
    // Every accessor on arbitrary (but parsed) input.
    let _ = format!("{request:?}");
    let _ = (request.method(), request.target(), request.path(), request.query(), request.minor_version());
    let _ = (request.query_param("a"), request.query_param(""), request.origin(), request.host());
    let _ = (request.wants_upgrade(), request.has_token("connection", "upgrade"), request.has_token("x", ""));
    let _ = request.headers().count() + request.protocols().count();
    let _ = (request.header("sec-websocket-key"), request.header_bytes("upgrade"));
    assert!(request.target().starts_with(request.path()));

    // A prefix of a complete head is incomplete.
    let prefix_len = usize::from(cut) * head_len / 256;
    match Request::parse(&head[..prefix_len]) {
        Ok(RequestParse::Incomplete) => {}
        other => panic!("prefix of {prefix_len} of a {head_len}-byte head: {other:?}"),
    }

    let strict = validate_upgrade(&request, UpgradeChecks::default());
    for skip_upgrade_check in [false, true] {
        for skip_version_check in [false, true] {
            let checks = UpgradeChecks { skip_upgrade_check, skip_version_check };
            let result = validate_upgrade(&request, checks);
            if strict.is_ok() {
                assert_eq!(result, strict, "skipping checks changed a successful upgrade");
            }
            match result {
                Ok(accept) => {
                    let key = request.header_bytes("sec-websocket-key").expect("accepted without a key").trim_ascii();
                    assert_eq!(accept, handshake::accept_key(key));
                    assert_eq!(accept.len(), 28);
                    let response = handshake::accept_response(&accept, request.protocols().next(), "");
                    assert!(response.starts_with(b"HTTP/1.1 101 ") && response.ends_with(b"\r\n\r\n"));
                }
                Err(error) => {
                    let _ = error.response();
                }
            }
        }
    }
}

fn client_side(head: &[u8]) {
    let client = ClientHandshake::new(
        &ClientRequest { host: "server.example.com", port: 80, path: "/chat", ..Default::default() },
        NONCE,
    )
    .expect("a valid request");
    match client.parse_response(head) {
        Ok(Some((response, head_len))) => {
            assert!(head_len <= head.len());
            assert!(head[..head_len].ends_with(b"\n"));
            let accept = response.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-accept"));
            assert_eq!(accept.map(|(_, v)| v.trim()), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        }
        Ok(None) => assert!(head.len() < MAX_HEAD_LEN, "{} bytes without a complete head", head.len()),
        Err(error) => {
            let _ = error.to_string();
        }
    }
}
