//! A full disk never stops calls: `DATA_DIR` on a tiny tmpfs filled to the last byte, a whole
//! call runs (every frame both ways), the store counts its failed writes
//! (`callbridge_store_write_errors_total{error="disk_full"}`), and once there is room again the
//! call's final record lands with its conversation.
//!
//! Mounting a tmpfs needs root (CAP_SYS_ADMIN). Without it the test says so and passes, unless
//! `CALLBRIDGE_REQUIRE_TMPFS=1` (CI sets it), which makes it fail instead.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use callbridge_testkit::demo::demo_script;
use callbridge_testkit::sim::caller::CallerConfig;
use callbridge_testkit::sim::webhook::sid;
use common::store::{admin, wait_for_call, ADMIN_TOKEN};
use common::{eventually, mock, run_signed_call, temp_data_dir, Proxy};

/// Size of the filesystem: room for the empty store and not much more.
const TMPFS_BYTES: u64 = 4 * 1024 * 1024;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let dir = temp_data_dir("tmpfs");
        std::fs::create_dir_all(&dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}")])
            .arg("tmpfs")
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(Tmpfs(dir))
        } else {
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the filesystem of `dir` with `dir/filler` until the kernel says ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0xa5u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    let _ = f.sync_all();
    path
}

/// The value of `name{labels}` on `/metrics` (0 when absent).
async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    let resp = common::http(addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&resp.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_stops_a_call_and_its_record_lands_once_there_is_room() {
    let Some(fs) = Tmpfs::mount() else {
        assert!(
            std::env::var("CALLBRIDGE_REQUIRE_TMPFS").is_err(),
            "CALLBRIDGE_REQUIRE_TMPFS is set but a tmpfs cannot be mounted (run as root)"
        );
        eprintln!("skipped: mounting a tmpfs needs root (CAP_SYS_ADMIN)");
        return;
    };
    let data = fs.0.join("data");
    let data_s = data.display().to_string();
    let mock = mock(|_| {}).await;
    let proxy = Proxy::with_mock(
        &mock,
        &[("DATA_DIR", data_s.as_str()), ("ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let filler = fill(&fs.0);
    let failed = "callbridge_store_write_errors_total{error=\"disk_full\"}";
    assert_eq!(metric(proxy.addr, failed).await, 0.0);

    // A whole call with a full disk: it completes as if nothing happened.
    let n = 1301;
    let report = run_signed_call(&proxy, CallerConfig::new(proxy.addr, n, demo_script())).await;
    let stream = report.stream.expect("the call streamed");
    assert!(
        stream.frames_sent > 100 && stream.played_ms_total > 1000,
        "{stream:?}"
    );
    let mut seen = 0.0;
    for _ in 0..200 {
        seen = metric(proxy.addr, failed).await;
        if seen > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen > 0.0, "failed writes are counted:\n{}", proxy.log());
    assert!(
        common::logged(&proxy, "store write failed").await,
        "{}",
        proxy.log()
    );
    let call_sid = sid("CA", u128::from(n));
    let (status, _) = admin(
        proxy.addr,
        "GET",
        &format!("/api/admin/calls/{call_sid}"),
        "",
    )
    .await;
    assert_eq!(status, 404, "nothing of the call could be written yet");

    // Room again: the writer's next try writes the whole call.
    std::fs::remove_file(&filler).expect("remove the filler");
    let rec = wait_for_call(proxy.addr, &call_sid, Duration::from_secs(10), |v| {
        v["status"] == "completed"
    })
    .await;
    let items = rec["realtimeConversation"].as_array().unwrap();
    assert!(
        items.iter().any(|i| i["type"] == "caller_transcript")
            && items.iter().any(|i| i["type"] == "assistant_transcript"),
        "{rec}"
    );
    assert_eq!(rec["items"], items.len() as u64);
    assert_eq!(rec["itemsLost"], 0, "few items: none had to be dropped");
    assert!(
        eventually(Duration::from_secs(2), || proxy
            .log()
            .contains("store writes succeed again"))
        .await,
        "{}",
        proxy.log()
    );
    drop(proxy);
}
