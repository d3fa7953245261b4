//! The SCTP codec and responder without sockets: round trips, rejection of malformed packets,
//! what the responder answers, and seeded fuzzing (random bytes, truncations, bit flips) that
//! must never panic. Also the probe vocabulary's parsing and serialization.

use std::net::IpAddr;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use septum_lab::connect::{ProbeResult, Protocol};
use septum_lab::sctp::{
    Chunk, DecodeError, InitChunk, Ipv4Rejection, Packet, Responder, checksum, chunk_type,
    strip_ipv4_header,
};

const FUZZ_CASES: usize = 20_000;
const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 213, 0, 2));

fn init_chunk(tag: u32) -> InitChunk {
    InitChunk {
        initiate_tag: tag,
        advertised_receiver_window: 65536,
        outbound_streams: 10,
        inbound_streams: 10,
        initial_tsn: 77,
    }
}

fn packet(source_port: u16, destination_port: u16, tag: u32, chunks: Vec<Chunk>) -> Packet {
    Packet {
        source_port,
        destination_port,
        verification_tag: tag,
        chunks,
    }
}

fn init_packet(destination_port: u16, tag: u32) -> Packet {
    packet(
        40000,
        destination_port,
        0,
        vec![Chunk::Init(init_chunk(tag))],
    )
}

/// One packet of every chunk kind the codec knows.
fn sample_packets() -> Vec<Packet> {
    vec![
        init_packet(80, 0x1234_5678),
        packet(
            80,
            40000,
            0x1234_5678,
            vec![Chunk::InitAck {
                init: init_chunk(0x9abc_def0),
                state_cookie: vec![1, 2, 3, 4, 5],
            }],
        ),
        packet(
            40000,
            80,
            7,
            vec![Chunk::CookieEcho {
                cookie: vec![9; 24],
            }],
        ),
        packet(80, 40000, 7, vec![Chunk::CookieAck]),
        packet(
            80,
            40000,
            7,
            vec![Chunk::Abort {
                tag_reflected: true,
                error_causes: vec![0, 1, 0, 8, 0, 0, 0, 1],
            }],
        ),
        packet(
            40000,
            80,
            7,
            vec![Chunk::Shutdown {
                cumulative_tsn_ack: 99,
            }],
        ),
        packet(80, 40000, 7, vec![Chunk::ShutdownAck]),
        packet(
            40000,
            80,
            7,
            vec![Chunk::ShutdownComplete {
                tag_reflected: false,
            }],
        ),
        packet(
            40000,
            80,
            7,
            vec![
                Chunk::Heartbeat {
                    info: vec![0, 1, 0, 7, 1, 2, 3],
                },
                Chunk::HeartbeatAck { info: vec![5] },
                Chunk::Other {
                    chunk_type: 0xc1,
                    flags: 3,
                    value: vec![1, 2, 3],
                },
            ],
        ),
    ]
}

fn encode(packet: &Packet) -> Vec<u8> {
    packet.encode().expect("sample packets are encodable")
}

/// Writes the correct checksum into `bytes` (at least a common header long).
fn fix_checksum(bytes: &mut [u8]) {
    let crc = checksum(bytes);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn every_chunk_kind_round_trips() {
    for sample in sample_packets() {
        let bytes = encode(&sample);
        assert_eq!(bytes.len() % 4, 0, "{sample:?} encodes to a padded length");
        assert_eq!(
            Packet::decode(&bytes),
            Ok(sample.clone()),
            "{sample:?} should decode to itself"
        );
    }
}

#[test]
fn init_has_the_rfc_layout_and_a_little_endian_crc32c() {
    let bytes = encode(&init_packet(80, 0x0102_0304));
    // Common header, then INIT: type 1, flags 0, length 20, tag, a_rwnd, OS, MIS, TSN.
    assert_eq!(
        &bytes[0..8],
        &[0x9c, 0x40, 0, 80, 0, 0, 0, 0],
        "ports and tag"
    );
    assert_eq!(&bytes[12..16], &[1, 0, 0, 20], "INIT chunk header");
    assert_eq!(&bytes[16..20], &[1, 2, 3, 4], "Initiate Tag");
    let mut zeroed = bytes.clone();
    zeroed[8..12].fill(0);
    assert_eq!(
        bytes[8..12],
        crc32c::crc32c(&zeroed).to_le_bytes(),
        "the checksum is CRC32c of the packet with a zero checksum field, little-endian"
    );
}

#[test]
fn malformed_packets_are_rejected_with_a_reason() {
    let good = encode(&init_packet(80, 5));
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = good.clone();
        edit(&mut bytes);
        fix_checksum(&mut bytes);
        Packet::decode(&bytes)
    };
    assert_eq!(
        Packet::decode(&good[..11]),
        Err(DecodeError::ShortPacket { length: 11 })
    );
    let mut corrupt = good.clone();
    corrupt[20] ^= 1;
    assert!(
        matches!(Packet::decode(&corrupt), Err(DecodeError::Checksum { .. })),
        "a flipped bit must fail the checksum"
    );
    assert_eq!(
        with(&|bytes| bytes.truncate(12)),
        Err(DecodeError::NoChunks)
    );
    assert_eq!(
        with(&|bytes| bytes.extend_from_slice(&[0, 0])),
        Err(DecodeError::ChunkHeaderTruncated { offset: 32 })
    );
    assert!(
        matches!(
            with(&|bytes| bytes[14..16].copy_from_slice(&3u16.to_be_bytes())),
            Err(DecodeError::ChunkLength { length: 3, .. })
        ),
        "a chunk length below 4 is rejected"
    );
    assert!(
        matches!(
            with(&|bytes| bytes[14..16].copy_from_slice(&200u16.to_be_bytes())),
            Err(DecodeError::ChunkLength { length: 200, .. })
        ),
        "a chunk longer than the packet is rejected"
    );
    assert_eq!(
        with(&|bytes| {
            bytes.truncate(28);
            bytes[14..16].copy_from_slice(&16u16.to_be_bytes());
        }),
        Err(DecodeError::ChunkValueShort {
            chunk_type: chunk_type::INIT,
            length: 12,
            minimum: 16,
        })
    );
    assert_eq!(
        with(&|bytes| bytes[16..20].fill(0)),
        Err(DecodeError::ZeroInitiateTag {
            chunk_type: chunk_type::INIT
        })
    );
    assert_eq!(
        with(&|bytes| bytes[12] = chunk_type::INIT_ACK),
        Err(DecodeError::MissingStateCookie),
        "INIT-ACK must carry a State Cookie"
    );
    assert!(
        matches!(
            with(&|bytes| {
                // A parameter header claiming 64 bytes inside a 24-byte chunk value.
                bytes.extend_from_slice(&[0, 5, 0, 64]);
                bytes[14..16].copy_from_slice(&24u16.to_be_bytes());
            }),
            Err(DecodeError::ParameterLength { length: 64, .. })
        ),
        "a parameter overrunning its chunk is rejected"
    );
}

fn ipv4_header(payload_len: usize) -> Vec<u8> {
    let total = u16::try_from(20 + payload_len).expect("small payload");
    let mut header = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 132, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    header[2..4].copy_from_slice(&total.to_be_bytes());
    header
}

#[test]
fn ipv4_headers_are_stripped_and_checked() {
    let sctp = encode(&init_packet(80, 5));
    let mut datagram = ipv4_header(sctp.len());
    datagram.extend_from_slice(&sctp);
    let envelope = strip_ipv4_header(&datagram).expect("a well-formed datagram");
    assert_eq!(envelope.source, std::net::Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(envelope.destination, std::net::Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(envelope.payload, sctp.as_slice());
    let rejection = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = datagram.clone();
        edit(&mut bytes);
        match strip_ipv4_header(&bytes) {
            Err(DecodeError::Ipv4 { reason }) => reason,
            other => panic!("expected an IPv4 rejection, got {other:?}"),
        }
    };
    assert_eq!(
        rejection(&|b| b.truncate(19)),
        Ipv4Rejection::Short { length: 19 }
    );
    assert_eq!(
        rejection(&|b| b[0] = 0x65),
        Ipv4Rejection::Version { version: 6 }
    );
    assert!(matches!(
        rejection(&|b| b[0] = 0x44),
        Ipv4Rejection::HeaderLength { .. }
    ));
    assert!(matches!(
        rejection(&|b| b[0] = 0x4f),
        Ipv4Rejection::HeaderLength { .. }
    ));
    assert!(matches!(
        rejection(&|b| b[2] = 0xff),
        Ipv4Rejection::TotalLength { .. }
    ));
    assert_eq!(
        rejection(&|b| b[9] = 6),
        Ipv4Rejection::Protocol { protocol: 6 }
    );
    assert_eq!(rejection(&|b| b[6] = 0x20), Ipv4Rejection::Fragment);
}

/// INIT, then COOKIE-ECHO of the cookie from INIT-ACK: the responder's side of a handshake.
/// Returns the responder's tag and the COOKIE-ACK packet.
fn establish(responder: &mut Responder, port: u16, client_tag: u32) -> (u32, Packet) {
    let now = Instant::now();
    let init_ack = responder
        .respond(PEER, &init_packet(port, client_tag), now)
        .expect("INIT to a served port is answered");
    assert_eq!(
        init_ack.verification_tag, client_tag,
        "INIT-ACK carries the client's tag"
    );
    assert_eq!(
        (init_ack.source_port, init_ack.destination_port),
        (port, 40000)
    );
    let [Chunk::InitAck { init, state_cookie }] = init_ack.chunks.as_slice() else {
        panic!("INIT must be answered by a lone INIT-ACK, got {init_ack:?}");
    };
    let echo = packet(
        40000,
        port,
        init.initiate_tag,
        vec![Chunk::CookieEcho {
            cookie: state_cookie.clone(),
        }],
    );
    let cookie_ack = responder
        .respond(PEER, &echo, now)
        .expect("COOKIE-ECHO with the issued cookie is answered");
    (init.initiate_tag, cookie_ack)
}

#[test]
fn responder_sets_up_and_shuts_down_an_association() {
    let mut responder = Responder::new([80]);
    let (server_tag, cookie_ack) = establish(&mut responder, 80, 0xaaaa);
    assert_eq!(cookie_ack.chunks, vec![Chunk::CookieAck]);
    assert_eq!(
        cookie_ack.verification_tag, 0xaaaa,
        "COOKIE-ACK carries the client's tag"
    );
    assert_eq!(responder.associations(), 1);
    let now = Instant::now();
    let shutdown = packet(
        40000,
        80,
        server_tag,
        vec![Chunk::Shutdown {
            cumulative_tsn_ack: 0,
        }],
    );
    let shutdown_ack = responder
        .respond(PEER, &shutdown, now)
        .expect("SHUTDOWN is answered");
    assert_eq!(shutdown_ack.chunks, vec![Chunk::ShutdownAck]);
    assert_eq!(shutdown_ack.verification_tag, 0xaaaa);
    let heartbeat = packet(
        40000,
        80,
        server_tag,
        vec![Chunk::Heartbeat { info: vec![7; 8] }],
    );
    assert_eq!(
        responder
            .respond(PEER, &heartbeat, now)
            .map(|reply| reply.chunks),
        Some(vec![Chunk::HeartbeatAck { info: vec![7; 8] }])
    );
    let complete = packet(
        40000,
        80,
        server_tag,
        vec![Chunk::ShutdownComplete {
            tag_reflected: false,
        }],
    );
    assert_eq!(responder.respond(PEER, &complete, now), None);
    assert_eq!(
        responder.associations(),
        0,
        "SHUTDOWN COMPLETE ends the association"
    );
}

#[test]
fn responder_forgets_an_aborted_association() {
    let mut responder = Responder::new([80]);
    let (server_tag, _) = establish(&mut responder, 80, 0xbbbb);
    let abort = packet(
        40000,
        80,
        server_tag,
        vec![Chunk::Abort {
            tag_reflected: false,
            error_causes: Vec::new(),
        }],
    );
    assert_eq!(
        responder.respond(PEER, &abort, Instant::now()),
        None,
        "ABORT is not answered"
    );
    assert_eq!(responder.associations(), 0);
    // The same association again, aborted with the client's own tag reflected.
    let (_, _) = establish(&mut responder, 80, 0xcccc);
    let reflected = packet(
        40000,
        80,
        0xcccc,
        vec![Chunk::Abort {
            tag_reflected: true,
            error_causes: Vec::new(),
        }],
    );
    assert_eq!(responder.respond(PEER, &reflected, Instant::now()), None);
    assert_eq!(
        responder.associations(),
        0,
        "a T-bit ABORT with the peer's tag ends it too"
    );
}

#[test]
fn responder_aborts_init_to_an_unserved_port_with_the_initiate_tag() {
    let mut responder = Responder::new([80]);
    let reply = responder
        .respond(PEER, &init_packet(81, 0xdddd), Instant::now())
        .expect("INIT to an unserved port gets ABORT");
    // RFC 9260 §8.4 item 3: the INIT's Initiate Tag, T bit clear.
    assert_eq!(reply.verification_tag, 0xdddd);
    assert_eq!(
        reply.chunks,
        vec![Chunk::Abort {
            tag_reflected: false,
            error_causes: Vec::new()
        }]
    );
    assert_eq!((reply.source_port, reply.destination_port), (81, 40000));
}

#[test]
fn responder_stays_silent_where_a_real_stack_would() {
    let mut responder = Responder::new([80]);
    let now = Instant::now();
    let silent = [
        // Tag 0 without a lone INIT (§8.5.1 A).
        packet(40000, 80, 0, vec![Chunk::CookieAck]),
        packet(
            40000,
            80,
            0,
            vec![Chunk::Init(init_chunk(1)), Chunk::CookieAck],
        ),
        // INIT with a nonzero tag.
        packet(40000, 80, 9, vec![Chunk::Init(init_chunk(1))]),
        // Anything but INIT to an unserved port may be a local probe's.
        packet(
            80,
            40000,
            9,
            vec![Chunk::InitAck {
                init: init_chunk(3),
                state_cookie: vec![1],
            }],
        ),
        packet(
            40000,
            81,
            9,
            vec![Chunk::Shutdown {
                cumulative_tsn_ack: 0,
            }],
        ),
        // A cookie this responder did not issue.
        packet(
            40000,
            80,
            9,
            vec![Chunk::CookieEcho {
                cookie: vec![0; 24],
            }],
        ),
        // Out of the blue ABORT and COOKIE-ACK on a served port.
        packet(
            40000,
            80,
            9,
            vec![Chunk::Abort {
                tag_reflected: false,
                error_causes: Vec::new(),
            }],
        ),
        packet(40000, 80, 9, vec![Chunk::CookieAck]),
    ];
    for packet in silent {
        assert_eq!(
            responder.respond(PEER, &packet, now),
            None,
            "the responder should not answer {packet:?}"
        );
    }
    let ootb_shutdown_ack = packet(40000, 80, 9, vec![Chunk::ShutdownAck]);
    assert_eq!(
        responder
            .respond(PEER, &ootb_shutdown_ack, now)
            .map(|reply| (reply.verification_tag, reply.chunks)),
        Some((
            9,
            vec![Chunk::ShutdownComplete {
                tag_reflected: true
            }]
        )),
        "an out-of-the-blue SHUTDOWN-ACK gets SHUTDOWN COMPLETE with the tag reflected"
    );
}

#[test]
fn responder_rejects_tampered_and_misdirected_cookies() {
    let mut responder = Responder::new([80, 81]);
    let now = Instant::now();
    let init_ack = responder
        .respond(PEER, &init_packet(80, 0xeeee), now)
        .expect("INIT-ACK");
    let [Chunk::InitAck { init, state_cookie }] = init_ack.chunks.as_slice() else {
        panic!("expected INIT-ACK, got {init_ack:?}");
    };
    for index in 0..state_cookie.len() {
        let mut tampered = state_cookie.clone();
        tampered[index] ^= 0x10;
        let echo = packet(
            40000,
            80,
            init.initiate_tag,
            vec![Chunk::CookieEcho { cookie: tampered }],
        );
        assert_eq!(
            responder.respond(PEER, &echo, now),
            None,
            "a cookie with byte {index} changed must be refused"
        );
    }
    let cookie = || {
        vec![Chunk::CookieEcho {
            cookie: state_cookie.clone(),
        }]
    };
    assert_eq!(
        responder.respond(PEER, &packet(40000, 81, init.initiate_tag, cookie()), now),
        None,
        "other port"
    );
    assert_eq!(
        responder.respond(PEER, &packet(40001, 80, init.initiate_tag, cookie()), now),
        None,
        "other peer port"
    );
    assert_eq!(
        responder.respond(
            PEER,
            &packet(40000, 80, init.initiate_tag ^ 1, cookie()),
            now
        ),
        None,
        "other tag"
    );
    let later = now + std::time::Duration::from_secs(120);
    assert_eq!(
        responder.respond(PEER, &packet(40000, 80, init.initiate_tag, cookie()), later),
        None,
        "stale cookie"
    );
    assert_eq!(responder.associations(), 0);
}

#[test]
fn fuzzed_bytes_never_panic_the_decoder_or_responder() {
    let mut rng = StdRng::seed_from_u64(0x5e97_0001);
    let mut responder = Responder::new([80, 81]);
    let now = Instant::now();
    let mut decoded = 0;
    let mut feed = |bytes: &[u8], responder: &mut Responder| {
        if let Ok(packet) = Packet::decode(bytes) {
            decoded += 1;
            // Whatever decodes must encode again and be answerable without panicking.
            let _ = packet.encode();
            if let Some(reply) = responder.respond(PEER, &packet, now) {
                reply.encode().expect("a reply is always encodable");
            }
        }
        let _ = strip_ipv4_header(bytes);
    };
    for _ in 0..FUZZ_CASES {
        // Pure noise, almost always failing the checksum.
        let length = rng.gen_range(0..96);
        let mut bytes: Vec<u8> = (0..length).map(|_| rng.r#gen()).collect();
        feed(&bytes, &mut responder);
        // The same noise with a valid checksum, so the chunk parser sees it.
        if bytes.len() >= 12 {
            fix_checksum(&mut bytes);
            feed(&bytes, &mut responder);
        }
    }
    for _ in 0..FUZZ_CASES {
        // Plausible structure: chunks of known types with lengths that may lie.
        let mut bytes = vec![0, 80, 0, 80];
        bytes.extend_from_slice(&rng.gen_range(0u32..3).to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        for _ in 0..rng.gen_range(1..4) {
            let value_len = rng.gen_range(0..40usize);
            let declared = if rng.gen_bool(0.7) {
                4 + value_len as u16
            } else {
                rng.gen_range(0..64)
            };
            bytes.push(rng.gen_range(0..16));
            bytes.push(rng.r#gen());
            bytes.extend_from_slice(&declared.to_be_bytes());
            bytes.extend((0..value_len).map(|_| rng.r#gen::<u8>()));
            if rng.gen_bool(0.8) {
                bytes.resize(bytes.len().next_multiple_of(4), 0);
            }
        }
        fix_checksum(&mut bytes);
        feed(&bytes, &mut responder);
    }
    let samples: Vec<Vec<u8>> = sample_packets().iter().map(encode).collect();
    for sample in &samples {
        // Every truncation, with and without a repaired checksum.
        for end in 0..sample.len() {
            let mut truncated = sample[..end].to_vec();
            feed(&truncated, &mut responder);
            if truncated.len() >= 12 {
                fix_checksum(&mut truncated);
                feed(&truncated, &mut responder);
            }
        }
    }
    for _ in 0..FUZZ_CASES {
        // Bit flips in valid packets, checksum repaired; and inside an IPv4 datagram.
        let mut bytes = samples[rng.gen_range(0..samples.len())].clone();
        for _ in 0..rng.gen_range(1..4) {
            let index = rng.gen_range(0..bytes.len());
            bytes[index] ^= 1 << rng.gen_range(0..8);
        }
        fix_checksum(&mut bytes);
        feed(&bytes, &mut responder);
        let mut datagram = ipv4_header(bytes.len());
        datagram.extend_from_slice(&bytes);
        let flip = rng.gen_range(0..datagram.len());
        datagram[flip] ^= rng.r#gen::<u8>();
        if let Ok(envelope) = strip_ipv4_header(&datagram) {
            feed(envelope.payload, &mut responder);
        }
    }
    assert!(
        decoded > 1000,
        "the fuzzer should reach the chunk parser often, decoded {decoded}"
    );
}

#[test]
fn protocols_parse_in_any_case_and_print_as_kubernetes_spells_them() {
    for (text, protocol) in [
        ("TCP", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("Sctp", Protocol::Sctp),
    ] {
        assert_eq!(text.parse::<Protocol>(), Ok(protocol), "{text:?}");
        assert_eq!(protocol.to_string(), text.to_ascii_uppercase());
        assert_eq!(protocol.as_str(), text.to_ascii_uppercase());
    }
    let error = "ICMP"
        .parse::<Protocol>()
        .expect_err("ICMP is no probe protocol");
    assert!(
        error.to_string().contains("\"ICMP\""),
        "the error names the value: {error}"
    );
    assert_eq!(
        serde_json::to_string(&ProbeResult::Connected).expect("serializes"),
        "\"connected\""
    );
    assert_eq!(
        serde_json::to_string(&ProbeResult::Timeout).expect("serializes"),
        "\"timeout\""
    );
}
