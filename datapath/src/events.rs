//! The flow-event reader: drains the ring buffer the programs write one [`FlowEvent`] per new
//! flow and per (rate-limited) drop into, synchronously or as an async stream.

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use septum_datapath_common::{FlowEvent, map_sizes};
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
        drain_into(&mut self.ring, &mut out);
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
    ///
    /// The programs wake the reader only when the ring fills past its wakeup mark
    /// (`map_sizes::EVENTS_WAKEUP_BYTES`), so this also drains on a timer
    /// (`map_sizes::EVENTS_POLL_INTERVAL_MS`): under light traffic an event waits at most that
    /// long.
    pub async fn next_batch(&mut self) -> io::Result<Vec<FlowEvent>> {
        let interval = Duration::from_millis(map_sizes::EVENTS_POLL_INTERVAL_MS);
        loop {
            let mut out = Vec::new();
            match tokio::time::timeout(interval, self.fd.readable_mut()).await {
                Ok(guard) => {
                    let mut guard = guard?;
                    drain_into(guard.get_inner_mut(), &mut out);
                    guard.clear_ready();
                }
                Err(_elapsed) => drain_into(self.fd.get_mut(), &mut out),
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

fn drain_into(ring: &mut RingBuf<MapData>, out: &mut Vec<FlowEvent>) {
    while let Some(item) = ring.next() {
        if let Some(ev) = decode_event(&item) {
            out.push(ev);
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
