//! Lengths sent by a peer never drive allocations: measured with a counting global allocator
//! that records the largest single allocation. One test function only, so no other test of
//! this binary allocates concurrently.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::*;
use lamina_protocol::*;

struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns the largest single allocation it made.
fn largest_allocation_in(f: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::SeqCst);
    f();
    LARGEST.load(Ordering::SeqCst)
}

const SMALL: usize = 64 << 10;

#[test]
fn peer_lengths_do_not_drive_allocations() {
    // A 4 GiB - 1 frame under a limit that allows it: the decoder waits for bytes and grows
    // only with what actually arrived.
    let n = largest_allocation_in(|| {
        let mut dec = FrameDecoder::new(FrameLimits::with_max_frame_bytes(u32::MAX));
        dec.push(&(u32::MAX - 1).to_le_bytes());
        assert_eq!(dec.next_frame().unwrap(), None);
        dec.push(&[0u8; 1000]);
        assert_eq!(dec.next_frame().unwrap(), None);
        assert!(dec.finish().is_err());
    });
    assert!(n < SMALL, "largest allocation {n}");

    // Under the default limit: rejected from the prefix alone.
    let n = largest_allocation_in(|| {
        let mut dec = FrameDecoder::default();
        dec.push(&u32::MAX.to_le_bytes());
        assert!(matches!(
            dec.next_frame(),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    });
    assert!(n < SMALL, "largest allocation {n}");

    // A token list claiming 2^60 entries.
    let mut header = vec![0u8; 16];
    header.extend_from_slice(&[0, 0, 0, 253]);
    header.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let frame = raw_frame(5, &header, &[]);
    let n = largest_allocation_in(|| {
        assert!(decode_frame(&frame, &FrameLimits::default()).is_err());
    });
    assert!(n < SMALL, "largest allocation {n}");

    // A tensor shape claiming 2^32 - 1 dimensions.
    let mut header = vec![0u8; 16];
    header.extend_from_slice(&[0, 0, 1, 252]);
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    let frame = raw_frame(5, &header, &[]);
    let n = largest_allocation_in(|| {
        assert!(decode_frame(&frame, &FrameLimits::default()).is_err());
    });
    assert!(n < SMALL, "largest allocation {n}");

    // A name claiming 3 MiB in a 40-byte header: bincode's decode limit (4 MiB) is the bound
    // for containers inside a header.
    let mut header = bincode_bytes(PROTOCOL_VERSION);
    header.extend_from_slice(&[0; 32]);
    header.push(252);
    header.extend_from_slice(&(3u32 << 20).to_le_bytes());
    let frame = raw_frame(0, &header, &[]);
    let n = largest_allocation_in(|| {
        assert!(decode_frame(&frame, &FrameLimits::default()).is_err());
    });
    assert!(n <= 4 << 20, "largest allocation {n}");
    // ... and 5 MiB is refused before allocating.
    let len = header.len();
    header[len - 4..].copy_from_slice(&(5u32 << 20).to_le_bytes());
    let frame = raw_frame(0, &header, &[]);
    let n = largest_allocation_in(|| {
        assert!(matches!(
            decode_frame(&frame, &FrameLimits::default()),
            Err(ProtocolError::Malformed { .. })
        ));
    });
    assert!(n < SMALL, "largest allocation {n}");
}
