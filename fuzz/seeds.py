#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/corpus/TARGET/ (stdlib only).

Decoder inputs start with the 4-byte prefix described in fuzz/src/lib.rs (flags, frame
limit, message limit, chunk count) and the chunk sizes, then the wire bytes. Handshake
inputs start with one cut-point byte. Re-running only adds the seeds again (same names).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Selectors for size_limit(): 0xF6 -> 1 MiB, 0x96 -> 300, 0x40 -> 128, 0x0A -> 20.
MIB, S300, S128, S20 = 0xF6, 0x96, 0x40, 0x0A
SERVER, CLIENT, ANY_MASK, RSV1 = 0x00, 0x01, 0b010, 0b100 << 3


def mask(payload, key, phase=0):
    return bytes(b ^ key[(i + phase) % 4] for i, b in enumerate(payload))


def frame(opcode, payload, fin=True, key=None, rsv=0, length_bytes=None):
    """One frame; `length_bytes` forces a (possibly non-minimal) 0, 2 or 8-byte length."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if length_bytes is None:
        length_bytes = 0 if n <= 125 else 2 if n <= 0xFFFF else 8
    m = 0x80 if key else 0
    if length_bytes == 0:
        head = bytes([b0, m | n])
    elif length_bytes == 2:
        head = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if key:
        return head + bytes(key) + mask(payload, key)
    return head + payload


def decoder_input(wire, flags=SERVER, frame_limit=MIB, message_limit=MIB, chunks=()):
    assert len(chunks) <= 15
    return bytes([flags, frame_limit, message_limit, len(chunks)]) + bytes(c - 1 for c in chunks) + wire


K = [0x37, 0xFA, 0x21, 0x3D]  # RFC 6455 §5.7's key
K2 = [0x01, 0x02, 0x03, 0x04]
CLOSE_NORMAL = (1000).to_bytes(2, "big")


def decoder_seeds():
    utf8 = "κόσμε € 😀 ok".encode()
    long_text = ("x" * 100 + "é" * 40).encode()
    return {
        # RFC 6455 §5.7, exactly as in the RFC.
        "rfc-unmasked-hello": decoder_input(bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]), CLIENT),
        "rfc-masked-hello": decoder_input(bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])),
        "rfc-fragmented-hello": decoder_input(bytes([0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F]), CLIENT),
        "rfc-ping": decoder_input(bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]), CLIENT),
        "rfc-masked-pong": decoder_input(bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])),
        "rfc-256-binary": decoder_input(frame(0x2, bytes(range(256))), CLIENT),
        "rfc-64k-binary-head": decoder_input(bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0, 0]) + bytes(300), CLIENT),
        # Masked, fragmented, with control frames between fragments, read in odd chunks.
        "masked-fragments-chunked": decoder_input(
            frame(0x1, utf8[:5], fin=False, key=K)
            + frame(0x9, b"ping", key=K2)
            + frame(0x0, utf8[5:9], fin=False, key=K2)
            + frame(0x0, utf8[9:], key=K),
            chunks=(1, 3, 7, 2),
        ),
        "masked-long-text-chunked": decoder_input(frame(0x1, long_text, key=K), chunks=(17, 64, 5, 130)),
        "masked-binary-300": decoder_input(frame(0x2, bytes(range(256)) + bytes(44), key=K), chunks=(33, 97)),
        "close-with-reason": decoder_input(frame(0x8, CLOSE_NORMAL + b"bye", key=K)),
        "close-empty": decoder_input(frame(0x8, b"", key=K)),
        "close-bad-code": decoder_input(frame(0x8, (1005).to_bytes(2, "big"), key=K)),
        "non-minimal-length": decoder_input(frame(0x2, b"abc", key=K, length_bytes=8), flags=SERVER | ANY_MASK),
        "rsv1-allowed": decoder_input(frame(0x1, b"deflated?", key=K, rsv=0b100), flags=SERVER | RSV1),
        "either-masking": decoder_input(
            frame(0x2, b"masked", key=K) + frame(0x2, b"plain"), flags=CLIENT | ANY_MASK, chunks=(4,)
        ),
        "message-limit": decoder_input(
            frame(0x2, bytes(15), fin=False, key=K) + frame(0x0, bytes(15), key=K), frame_limit=S20, message_limit=S20
        ),
        "limits-128": decoder_input(frame(0x2, bytes(120), key=K) + frame(0x1, b"a" * 130, key=K), SERVER, S128, S300),
        "invalid-utf8-split": decoder_input(
            frame(0x1, b"\xe2\x82", fin=False, key=K) + frame(0x0, b"\xff", key=K), chunks=(3, 1)
        ),
        "unexpected-continuation": decoder_input(frame(0x0, b"x", key=K)),
        "control-too-long": decoder_input(frame(0x9, bytes(126), key=K)),
        "two-messages": decoder_input(frame(0x1, b"first", key=K) + frame(0x2, b"\x00\x01", key=K2), chunks=(2, 9)),
    }


def handshake_seeds():
    rfc = (
        b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    browser = (
        b"GET /ws?room=lobby&token=abc HTTP/1.1\r\nHost: localhost:8080\r\nConnection: Upgrade\r\n"
        b"Pragma: no-cache\r\nCache-Control: no-cache\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n"
        b"Upgrade: websocket\r\nOrigin: http://localhost:8080\r\nSec-WebSocket-Version: 13\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
        b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    firefox = (
        b"GET / HTTP/1.1\r\nHost: example.org\r\nConnection: keep-alive, Upgrade\r\nupgrade: WebSocket\r\n"
        b"sec-websocket-key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nsec-websocket-version: 13\r\n\r\n\x81\x85\x37\xfa\x21\x3d\x7f"
    )
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n\x81\x00"
    )
    refused = (
        b"HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
        b"Connection: close\r\nSec-WebSocket-Version: 13\r\n\r\nno"
    )
    return {
        "rfc-request": b"\x80" + rfc,
        "browser-request": b"\x40" + browser,
        "firefox-request-and-frame": b"\xff" + firefox,
        "version-8": b"\x10" + rfc.replace(b": 13", b": 8"),
        "post": b"\x20" + rfc.replace(b"GET", b"POST"),
        "http10": b"\x30" + rfc.replace(b"HTTP/1.1", b"HTTP/1.0"),
        "metrics": b"\x00GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n",
        "response-101": b"\x00" + response,
        "response-426": b"\x00" + refused,
        "tls-hello": b"\x00\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    }


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    sets = {
        "frame_parser": decoder_seeds(),
        "message_assembler": decoder_seeds(),
        "handshake_parser": handshake_seeds(),
    }
    for target, seeds in sets.items():
        out = os.path.join(root, target)
        os.makedirs(out, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(out, "seed-" + name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main()
