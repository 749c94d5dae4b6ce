//! Barge-in through the real binary: the caller interrupts the answer; callbridge clears
//! Twilio's playout and truncates the item at what the caller really heard (within 40 ms).

mod common;

use std::time::Duration;

use callbridge_testkit::demo::{demo_script, truncate_accuracy, TRUNCATE_TOLERANCE_MS};
use callbridge_testkit::sim::caller::CallerConfig;
use common::{closed_sessions, mock, run_signed_call, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_clears_then_truncates_what_the_caller_heard() {
    let mock = mock(|m| m.session.response_audio_ms = 3_500).await;
    let proxy = Proxy::with_mock(&mock, &[]);
    let report = run_signed_call(&proxy, CallerConfig::new(proxy.addr, 21, demo_script())).await;
    let stream = report.stream.as_ref().unwrap();
    assert!(stream.violations.is_empty(), "{:?}", stream.violations);
    assert_eq!(stream.clears.len(), 1, "one barge-in, one clear");
    let clear = &stream.clears[0];
    assert!(
        clear.was_playing,
        "the clear came while the assistant was playing"
    );
    assert!(
        clear.discarded_bytes > 0,
        "the clear discarded unplayed audio"
    );

    let sessions = closed_sessions(&mock, 1, Duration::from_secs(2)).await;
    let s = &sessions[0];
    assert!(s.stats.errors.is_empty(), "{:?}", s.stats.errors);
    let truncates = &s.stats.truncates;
    assert_eq!(truncates.len(), 1, "{truncates:?}");
    assert!(truncates[0].accepted);
    assert_eq!(
        Some(truncates[0].item_id.as_str()),
        clear.item_id.as_deref(),
        "the truncate names the item that was playing"
    );
    assert!(
        truncates[0].audio_end_ms as u64 <= truncates[0].sent_ms.unwrap(),
        "never more than the audio sent"
    );
    let accuracy = truncate_accuracy(&report, s);
    assert_eq!(accuracy.len(), 1);
    let (_, sent, played) = &accuracy[0];
    assert!(
        (sent - *played as i64).abs() <= TRUNCATE_TOLERANCE_MS,
        "audio_end_ms {sent} vs played {played}"
    );
    // The response after the barge-in was heard from its start: late deltas of the cancelled
    // response were not played after the clear.
    assert_eq!(
        s.stats.responses_cancelled + s.stats.responses_completed,
        s.stats.responses_created
    );
    let clear_at = clear.at;
    let late: Vec<_> = stream
        .media
        .iter()
        .filter(|m| m.at > clear_at && m.item_id == clear.item_id)
        .collect();
    assert!(
        late.is_empty(),
        "{} frames of the interrupted item arrived after the clear",
        late.len()
    );
}
