//! Work split over every core: contiguous shares of a slice, one scoped thread each.
//!
//! An evaluation pass, the mapping of a large page and the encoding of a large batch are
//! made of independent items; the process may run on more than one core (the daemon's other
//! work waits for the engine meanwhile), so each takes a share. Small jobs stay on the
//! calling thread: starting threads costs tens of microseconds.

/// Threads at most, whatever the machine: beyond this the shares' merging and the memory
/// bandwidth gain little.
const MAX_THREADS: usize = 8;

/// Runs `work` on contiguous shares of `items`, one per core the process may use (its
/// affinity and CPU quota count), and returns the results in the order of the shares.
/// `work` gets the index of its share's first item and the share. Fewer than `min` items
/// run on the calling thread as one share.
///
/// A panic in `work` is a bug: it reaches the caller as it was.
pub fn in_shares<'a, T, R>(
    items: &'a [T],
    min: usize,
    work: impl Fn(usize, &'a [T]) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let threads = if items.len() < min.max(2) {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
    };
    if threads == 1 {
        return vec![work(0, items)];
    }
    let share = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let running: Vec<_> = items
            .chunks(share)
            .enumerate()
            .map(|(i, part)| scope.spawn(move || work(i * share, part)))
            .collect();
        running
            .into_iter()
            .map(|t| match t.join() {
                Ok(done) => done,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Drops `items` in shares, one per core the process may use: freeing a bulk page's decoded
/// records, about a hundred thousand allocations, on one thread was most of the time the
/// poll's own thread spent on a page once the page parsed in shares. Fewer than `min` items
/// are dropped on the calling thread.
pub fn drop_in_shares<T: Send>(mut items: Vec<T>, min: usize) {
    let threads = if items.len() < min.max(2) {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
    };
    if threads == 1 {
        return;
    }
    let share = items.len().div_ceil(threads);
    let mut shares = Vec::with_capacity(threads);
    while items.len() > share {
        shares.push(items.split_off(items.len() - share));
    }
    std::thread::scope(|scope| {
        for part in shares {
            scope.spawn(move || drop(part));
        }
        drop(items);
    });
}

#[cfg(test)]
mod tests {
    use super::{drop_in_shares, in_shares};

    #[test]
    fn shares_cover_every_item_once_in_order() {
        let items: Vec<u32> = (0..10_001).collect();
        let parts = in_shares(&items, 2, |first, part| {
            assert_eq!(items[first], part[0], "a share starts at its index");
            part.to_vec()
        });
        assert_eq!(parts.concat(), items);
        let one = in_shares(&items[..5], 100, |first, part| (first, part.len()));
        assert_eq!(one, vec![(0, 5)], "a small job is one share");
        let none: Vec<usize> = in_shares(&items[..0], 2, |_, part| part.len());
        assert_eq!(none, vec![0]);
    }

    #[test]
    fn shares_drop_every_item_once() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (n, min) in [(10_001, 2), (5, 100), (0, 2), (1, 0)] {
            let dropped = Arc::new(AtomicUsize::new(0));
            let items = (0..n).map(|_| Counted(Arc::clone(&dropped))).collect();
            drop_in_shares(items, min);
            assert_eq!(dropped.load(Ordering::Relaxed), n, "{n} items, min {min}");
        }
    }
}
