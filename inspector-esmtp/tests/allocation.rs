//! Commands and replies allocate nothing once a session is under way: with
//! one `Output` passed to every call, as the proxy does, a pipelined batch
//! of MAIL, RCPT, RSET and NOOP and its replies make no heap allocation.
//! (The session's record keeps the MAIL FROM of its first transactions,
//! `MAX_TRANSACTIONS`, which the warm-up passes.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use inspector_esmtp::policy::EsmtpPolicy;
use inspector_esmtp::{MAX_TRANSACTIONS, Output, Peers, PolicyStats, Session};

/// Counts this thread's allocations (other tests' threads do not count).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn pipelined_commands_and_replies_allocate_nothing() {
    let policy = Arc::new(EsmtpPolicy::default());
    let peers = Peers {
        client: "198.18.0.1:40000".parse().unwrap(),
        server: "198.18.1.1:25".parse().unwrap(),
    };
    let mut s = Session::new(policy.clone(), Arc::new(PolicyStats::new(&policy)), peers);
    let now = Instant::now();
    let mut out = Output::default();
    s.on_server_data(b"220 mx.example ESMTP\r\n", now, &mut out);
    s.on_client_data(b"EHLO client.example\r\n", now, &mut out);
    s.on_server_data(b"250-mx.example\r\n250 PIPELINING\r\n", now, &mut out);
    let client = b"MAIL FROM:<sender@client.example>\r\nRCPT TO:<user@mx.example>\r\n\
                   RSET\r\nNOOP\r\n"
        .repeat(100);
    let server = b"250 2.0.0 Ok\r\n".repeat(400);
    let mut batch = |out: &mut Output| {
        s.on_client_data(&client, now, out);
        assert_eq!(out.to_server, client);
        s.on_server_data(&server, now, out);
        assert_eq!(out.to_client, server);
    };
    // Past the transactions the record keeps, and the buffers grown.
    for _ in 0..=MAX_TRANSACTIONS / 100 + 1 {
        batch(&mut out);
    }
    let before = allocations();
    for _ in 0..10 {
        batch(&mut out);
    }
    assert_eq!(allocations() - before, 0);
}
