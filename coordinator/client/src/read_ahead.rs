//! Runs an iterator on a thread of its own, a few batches ahead of its
//! consumer: a submission parses manifest lines on one core while the
//! other sorts or sends them (10M lines: reading, validating and sorting
//! took 12.2 s on one thread). Bounded: at most `BATCHES_AHEAD` batches of
//! `BATCH` items (or of one item each, for items that are batches
//! themselves: `read_ahead_each`) wait at a time. Dropping the consumer
//! stops the thread after the batch in hand and joins it.

use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Items handed over at a time.
const BATCH: usize = 1024;
/// Batches ready and waiting, at most.
const BATCHES_AHEAD: usize = 4;

pub struct ReadAhead<T> {
    batches: Option<Receiver<Vec<T>>>,
    current: std::vec::IntoIter<T>,
    thread: Option<JoinHandle<()>>,
}

/// `items`, produced on another thread, `BATCH` at a time.
pub fn read_ahead<I>(items: I) -> std::io::Result<ReadAhead<I::Item>>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    spawn(items, BATCH)
}

/// `items`, produced on another thread one at a time: for items that are
/// large (batches of entries), so that at most `BATCHES_AHEAD` wait.
pub fn read_ahead_each<I>(items: I) -> std::io::Result<ReadAhead<I::Item>>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    spawn(items, 1)
}

fn spawn<I>(items: I, per_batch: usize) -> std::io::Result<ReadAhead<I::Item>>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    let (sender, batches) = sync_channel(BATCHES_AHEAD);
    let thread = std::thread::Builder::new()
        .name("quern-read-ahead".into())
        .spawn(move || {
            let mut items = items;
            loop {
                let batch: Vec<I::Item> = items.by_ref().take(per_batch).collect();
                // An empty batch is the end; a closed channel, a consumer
                // that stopped.
                if batch.is_empty() || sender.send(batch).is_err() {
                    break;
                }
            }
        })?;
    Ok(ReadAhead {
        batches: Some(batches),
        current: Vec::new().into_iter(),
        thread: Some(thread),
    })
}

impl<T> Iterator for ReadAhead<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(item);
            }
            let batch = self.batches.as_ref()?.recv().ok()?;
            self.current = batch.into_iter();
        }
    }
}

impl<T> Drop for ReadAhead<T> {
    fn drop(&mut self) {
        // Closing the channel first makes the thread's next send fail.
        drop(self.batches.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the thread was already reported there.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn items_come_through_whole_and_in_order() {
        for n in [0, 1, BATCH - 1, BATCH, BATCH + 1, 10 * BATCH + 7] {
            let got: Vec<usize> = read_ahead(0..n).unwrap().collect();
            assert_eq!(got, (0..n).collect::<Vec<_>>());
        }
    }

    /// How many items an endless producer made when its consumer, reading
    /// through `start`, took `taken` of them (in order), let the thread
    /// fill the channel, and stopped: the drop joins the thread.
    fn made_after_stopping(
        start: fn(Endless) -> std::io::Result<ReadAhead<usize>>,
        taken: usize,
    ) -> usize {
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = produced.clone();
        let endless = std::iter::repeat_with(move || counter.fetch_add(1, Ordering::Relaxed));
        let mut ahead = start(Box::new(endless)).unwrap();
        let got: Vec<usize> = ahead.by_ref().take(taken).collect();
        assert_eq!(got, (0..taken).collect::<Vec<_>>());
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(ahead);
        produced.load(Ordering::Relaxed)
    }

    type Endless = Box<dyn Iterator<Item = usize> + Send>;

    #[test]
    fn a_consumer_that_stops_stops_the_thread_within_its_bound() {
        let made = made_after_stopping(read_ahead, 1);
        // One batch consumed, BATCHES_AHEAD waiting, one in hand when the
        // channel closed.
        assert!(made <= (BATCHES_AHEAD + 2) * BATCH, "{made} produced");
    }

    #[test]
    fn items_read_ahead_each_wait_at_most_batches_ahead() {
        let made = made_after_stopping(read_ahead_each, 2);
        assert!(made <= BATCHES_AHEAD + 3, "{made} produced");
    }
}
