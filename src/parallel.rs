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

#[cfg(test)]
mod tests {
    use super::in_shares;

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
}
