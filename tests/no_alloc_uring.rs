//! The io_uring driver's byte path allocates nothing per frame once warm: frames of a call's
//! size go back and forth through two connected `UringStream`s (recv and send on owned buffers,
//! the reader and writer tasks, the bounded rx/tx buffers, the wakeups), 10,000 each way.
//!
//! Everything runs on one tokio-uring thread, so a counting allocator that counts only on the
//! thread that switched it on sees the tasks' allocations too. (The same counter as
//! tests/no_alloc_per_frame.rs, which covers the codec and the call core.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use callbridge::runtime::io::Transport;
use callbridge::runtime::uring_stream::UringStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards its arguments unchanged to `System`; the counting touches only
// const thread-locals (no allocation, no reentrancy) and never changes what is returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's guarantees on `layout` are passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `dealloc`; `new_size` is passed on with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Frames each way in the measured loop.
const FRAMES: usize = 10_000;

/// A Twilio media frame's size on the wire.
const FRAME: usize = 400;

fn uring_ok() -> bool {
    match callbridge::runtime::uring::probe() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipped: io_uring unusable here: {why}");
            false
        }
    }
}

/// Sends one frame each way between the two ends.
async fn ping_pong<A, B>(a: &mut A, b: &mut B, out: &[u8], buf: &mut [u8])
where
    A: AsyncReadExt + AsyncWriteExt + Unpin,
    B: AsyncReadExt + AsyncWriteExt + Unpin,
{
    a.write_all(out).await.unwrap();
    b.read_exact(buf).await.unwrap();
    b.write_all(out).await.unwrap();
    a.read_exact(buf).await.unwrap();
}

#[test]
fn frames_through_the_uring_stream_allocate_nothing_once_warm() {
    if !uring_ok() {
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
        let (a_rd, a_wr) = a.into_halves();
        let (b_rd, b_wr) = b.into_halves();
        let mut a = tokio::io::join(a_rd, a_wr);
        let mut b = tokio::io::join(b_rd, b_wr);
        let out = vec![0x7fu8; FRAME];
        let mut buf = vec![0u8; FRAME];
        for _ in 0..1_000 {
            ping_pong(&mut a, &mut b, &out, &mut buf).await;
        }
        COUNT.with(|n| n.set(0));
        COUNTING.with(|on| on.set(true));
        for _ in 0..FRAMES {
            ping_pong(&mut a, &mut b, &out, &mut buf).await;
        }
        COUNTING.with(|on| on.set(false));
        let n = COUNT.with(Cell::get);
        assert_eq!(n, 0, "{n} allocations for {FRAMES} frames each way");
    });
}

#[test]
fn the_counter_counts_allocations_of_this_thread() {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(16));
    std::hint::black_box(v);
    COUNTING.with(|on| on.set(false));
    assert_eq!(COUNT.with(Cell::get), 1);
}
