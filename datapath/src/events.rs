//! The flow-event reader: drains the ring buffer the programs write one [`FlowEvent`] per new
//! flow and per (rate-limited) drop into, synchronously or as an async stream.

use std::io;

use aya::maps::{MapData, RingBuf};
use septum_datapath_common::FlowEvent;
use tokio::io::{Interest, unix::AsyncFd};

/// Decodes one ring-buffer record; `None` if it is not a whole event (a layout mismatch).
pub fn decode_event(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: FlowEvent is plain data (every byte pattern is valid) and the slice holds at
    // least size_of::<FlowEvent>() bytes; read_unaligned copes with any alignment.
    Some(unsafe { bytes.as_ptr().cast::<FlowEvent>().read_unaligned() })
}

/// Reads flow events from the ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Every event currently in the ring, without waiting.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(ev) = decode_event(&item) {
                out.push(ev);
            }
        }
        out
    }

    /// Turns this reader into an async one (needs a tokio runtime).
    pub fn into_async(self) -> io::Result<AsyncEventReader> {
        // SAFETY: the ring buffer owns its fd, which stays open for as long as the AsyncFd
        // (which owns the ring buffer) lives.
        let fd = unsafe { AsyncFd::register_with_interest(self.ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(AsyncEventReader { fd })
    }
}

/// Reads flow events as they arrive.
pub struct AsyncEventReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl AsyncEventReader {
    /// Waits until at least one event is available and returns all available events.
    pub async fn next_batch(&mut self) -> io::Result<Vec<FlowEvent>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(ev) = decode_event(&item) {
                    out.push(ev);
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventReader")
    }
}

impl std::fmt::Debug for AsyncEventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncEventReader")
    }
}
