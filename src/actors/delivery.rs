//! A broker delivery (cluster mode), as the router takes it: which partition's share of an
//! event it carries, and how it is acknowledged. The broker's side is `cluster/`; the router
//! only calls [`Done::finish`] (through the event's ticket) or drops it.

use std::sync::Arc;

/// One partition's share of an event, as delivered by the broker: processing applies only the
/// conversations of `partition` and finishes `done` once they are committed.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub partition: u32,
    pub of: u32,
    /// This share also carries what no partition can name before the database is read
    /// (statuses without a recipient, hand-offs by Kapso id), what cannot be attributed, and
    /// the notes; exactly one share of an event is primary.
    pub primary: bool,
    pub done: Arc<Done>,
}

/// The partition number the router files an event under that came from the inbox itself
/// (single node, recovery, re-drives), not from a broker delivery.
pub const NO_PART: u32 = u32::MAX;

/// The partition an event is filed under: its delivery's, or [`NO_PART`].
pub fn partition(delivery: Option<&Delivery>) -> u32 {
    delivery.map_or(NO_PART, |d| d.partition)
}

/// Called once when a delivery is finished (`true`), or, if it is dropped unfinished (a
/// restarted router forgets its work), with `false`, so the broker delivers it again.
pub struct Done(std::sync::Mutex<Option<OnDone>>);

type OnDone = Box<dyn FnOnce(bool) + Send>;

impl Done {
    pub fn new(f: impl FnOnce(bool) + Send + 'static) -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new(Some(Box::new(f)))))
    }

    pub fn finish(&self) {
        self.call(true);
    }

    fn call(&self, finished: bool) {
        let f = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = f {
            f(finished);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.call(false);
    }
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Done")
    }
}
