//! `mock-openai --latency-ms`: the handshake and every frame are delayed by the simulated
//! network, and a burst of frames arrives together (a pipe), not one latency apart.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use callbridge::config::WsUrl;
use callbridge::openai::client::Connector;
use callbridge_core::openai::session::{encode_session_update, AgentSettings};
use callbridge_core::wire::ws::{Decoder, Encoder, Message, Role};
use common::mock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until `n` text messages have arrived; returns their types and when the last came.
async fn read_messages<R: AsyncReadExt + Unpin>(
    conn: &mut R,
    input: &mut Vec<u8>,
    n: usize,
) -> (Vec<String>, Instant) {
    let mut dec = Decoder::new(Role::Client, 1 << 24);
    let mut types = Vec::new();
    loop {
        let mut start = 0;
        loop {
            let d = dec.decode(&mut input[start..]).expect("valid frames");
            if d.needs_more() {
                break;
            }
            start += d.consumed;
            if let Some(Message::Text(t)) = d.message {
                let v: serde_json::Value = serde_json::from_slice(t).unwrap();
                types.push(v["type"].as_str().unwrap_or("").to_owned());
            }
        }
        input.drain(..start);
        if types.len() >= n {
            return (types, Instant::now());
        }
        let mut chunk = [0u8; 8192];
        let got = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .expect("frames in time")
            .expect("read");
        assert!(got > 0, "mock closed");
        input.extend_from_slice(&chunk[..got]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_the_handshake_and_each_frame_but_pipelines_bursts() {
    let latency = Duration::from_millis(80);
    // Without the schema self-check, whose cost (in a debug build) would blur the timing.
    let mock = mock(|c| {
        c.latency = latency;
        c.self_check = false;
    })
    .await;
    let url = WsUrl::parse(&mock.url()).unwrap();
    let connector = Arc::new(
        Connector::new(url, Some("sk-test".into()), None, Duration::from_secs(5)).unwrap(),
    );
    let began = Instant::now();
    let (mut conn, mut input) = connector.connect().await.expect("connect");
    let handshake = began.elapsed();
    assert!(handshake >= latency, "handshake took {handshake:?}");
    let (types, created_at) = read_messages(&mut conn, &mut input, 1).await;
    assert_eq!(types, ["session.created"]);
    assert!(
        created_at - began >= 2 * latency,
        "{:?}",
        created_at - began
    );

    // Three session.updates at once: three session.updated one latency later, together.
    let mut out = Vec::new();
    let mut frame = Vec::new();
    let agent = AgentSettings::default();
    for i in 0..3 {
        frame.clear();
        encode_session_update(&mut frame, &format!("ev_{i}"), "gpt-realtime", &agent);
        Encoder::new(Role::Client).text(&mut out, &frame);
    }
    // The first burst warms the mock's validators (slow the first time in a debug build).
    conn.write_all(&out).await.unwrap();
    let (types, _) = read_messages(&mut conn, &mut input, 3).await;
    assert_eq!(types, ["session.updated"; 3]);
    let sent = Instant::now();
    conn.write_all(&out).await.unwrap();
    let (types, last) = read_messages(&mut conn, &mut input, 3).await;
    assert_eq!(types, ["session.updated"; 3]);
    let took = last - sent;
    assert!(took >= latency, "{took:?}");
    assert!(
        took < 2 * latency,
        "a burst of 3 arrived {took:?} after sending: delayed one by one, not as a pipe"
    );
}
