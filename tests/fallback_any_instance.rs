//! No decision depends on which instance a request reaches (design.md "Many instances"): the
//! stream of a call runs on instance A and loses its OpenAI leg; Twilio's `<Redirect>` to
//! after-stream lands on instance B, which knows nothing of the call, and B answers the
//! conference (never `<Hangup/>`). A call that ended normally is hung up by the instance that
//! saw it end.

mod common;

use std::time::Duration;

use callbridge_testkit::sim::twiml::Twiml;
use callbridge_testkit::sim::webhook;
use common::{after_stream_conference, room, Proxy, RawStream, AUTH_TOKEN, PUBLIC_HOST};

const SHARED_SECRET: &str = "shared-stream-secret-of-a-and-b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_stream_on_another_instance_answers_the_conference_when_the_ai_leg_failed() {
    let n = 71;
    // A's OpenAI endpoint refuses every connection; B's is never used.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/v1/realtime", l.local_addr().unwrap())
    };
    let env = |url: &str| -> Vec<(&'static str, String)> {
        vec![
            ("OPENAI_REALTIME_URL", url.to_owned()),
            ("OPENAI_REALTIME_API_KEY", "sk-test".into()),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.into()),
            ("PUBLIC_HOST", PUBLIC_HOST.into()),
            ("STREAM_SECRET", SHARED_SECRET.into()),
        ]
    };
    let spawn = |vars: Vec<(&'static str, String)>| {
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Proxy::spawn(&pairs)
    };
    let a = spawn(env(&dead));
    let b = spawn(env("ws://127.0.0.1:9/v1/realtime"));

    // The webhook and the stream on A; A's AI leg fails and it closes the stream normally.
    let mut raw = RawStream::open(a.addr, n).await;
    raw.start().await;
    assert_eq!(raw.until_closed(Duration::from_secs(5)).await, Some(1000));
    assert!(common::logged(&a, "openai connect failed").await);
    // Twilio's <Redirect> reaches B: B never saw this call, and sends the caller to a person.
    assert_eq!(after_stream_conference(b.addr, n).await, Some(room(n)));
    // A, which saw it fail, answers the same.
    assert_eq!(after_stream_conference(a.addr, n).await, Some(room(n)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_minted_by_one_instance_runs_on_another_and_its_normal_end_hangs_up_there() {
    let n = 72;
    let mock = common::mock(|_| {}).await;
    let extra = [("STREAM_SECRET", SHARED_SECRET)];
    let a = Proxy::with_mock(&mock, &extra);
    let b = Proxy::with_mock(&mock, &extra);
    let resp = common::webhook(a.addr, n).await;
    let twiml = Twiml::parse(std::str::from_utf8(&resp.body).unwrap()).unwrap();
    let stream = twiml.stream().expect("a stream").clone();
    let sig = webhook::signature(AUTH_TOKEN, &stream.url, &[]);
    let mut raw = RawStream::connect(b.addr, &stream.path, &[("x-twilio-signature", &sig)])
        .await
        .expect("B accepts A's stream");
    raw.params = stream.parameters.clone();
    raw.call_sid = webhook::sid("CA", u128::from(n));
    raw.stream_sid = webhook::sid("MZ", u128::from(n));
    raw.start().await;
    raw.stop().await;
    assert_eq!(raw.until_closed(Duration::from_secs(5)).await, Some(1000));
    assert!(common::logged(&b, "call finished").await);
    // B saw the caller hang up; A knows nothing of it.
    assert_eq!(after_stream_conference(b.addr, n).await, None);
    assert_eq!(after_stream_conference(a.addr, n).await, Some(room(n)));
}
