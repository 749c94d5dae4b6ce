//! The io_uring driver's byte path allocates nothing per frame once warm: frames of a call's
//! size go back and forth through two connected `UringStream`s (recv and send operations on
//! owned buffers, their completions, the bounded tx buffer, the wakeups), 10,000 each way.
//!
//! Everything runs on one tokio-uring thread, so a counting allocator that counts only on the
//! thread that switched it on sees the tasks' allocations too. (The same counter as
//! tests/no_alloc_per_frame.rs, `tests/common/counting_alloc.rs`; that test covers the codec and
//! the call core.)

use callbridge::runtime::uring_stream::UringStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{start_counting, stop_counting};

/// Frames each way in the measured loop.
const FRAMES: usize = 10_000;

/// A Twilio media frame's size on the wire.
const FRAME: usize = 400;

/// Sends one frame each way between the two ends.
async fn ping_pong<A, B>(a: &mut A, b: &mut B, out: &[u8], buf: &mut [u8])
where
    A: AsyncReadExt + AsyncWriteExt + Unpin,
    B: AsyncReadExt + AsyncWriteExt + Unpin,
{
    // Flushed, as the call loop does: the stream sends what it queued on flush.
    a.write_all(out).await.unwrap();
    a.flush().await.unwrap();
    b.read_exact(buf).await.unwrap();
    b.write_all(out).await.unwrap();
    b.flush().await.unwrap();
    a.read_exact(buf).await.unwrap();
}

#[test]
fn frames_through_the_uring_stream_allocate_nothing_once_warm() {
    if !common::uring_usable() {
        return;
    }
    tokio_uring::start(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio_uring::net::TcpListener::from_std(listener);
        let (client, server) = tokio::join!(
            tokio_uring::net::TcpStream::connect(addr),
            listener.accept()
        );
        let a = UringStream::new(client.unwrap());
        let b = UringStream::new(server.unwrap().0);
        // Split like the call loop does.
        let (a_rd, a_wr) = a.into_split();
        let (b_rd, b_wr) = b.into_split();
        let mut a = tokio::io::join(a_rd, a_wr);
        let mut b = tokio::io::join(b_rd, b_wr);
        let out = vec![0x7fu8; FRAME];
        let mut buf = vec![0u8; FRAME];
        for _ in 0..1_000 {
            ping_pong(&mut a, &mut b, &out, &mut buf).await;
        }
        start_counting();
        for _ in 0..FRAMES {
            ping_pong(&mut a, &mut b, &out, &mut buf).await;
        }
        let n = stop_counting();
        assert_eq!(n, 0, "{n} allocations for {FRAMES} frames each way");
    });
}
