//! Work split over the cores: a long list in contiguous shares, one thread each,
//! answered in order. Loading a policy set uses it to parse one long rule list and to
//! compile many files.

/// `f` of each contiguous share of `items` (with the index of the share's first
/// item), in order. Fewer than `min_per_thread` items per core stay on the calling
/// thread as one share. A share whose thread panicked is `Err` with the panic, for the
/// caller to re-raise or to recover from; on the calling thread a panic is the
/// caller's.
pub fn map_shares<T: Sync, R: Send>(
    items: &[T],
    min_per_thread: usize,
    f: impl Fn(usize, &[T]) -> R + Sync,
) -> Vec<std::thread::Result<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len() / min_per_thread.max(1));
    if threads <= 1 {
        return vec![Ok(f(0, items))];
    }
    let per_thread = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let running: Vec<_> = items
            .chunks(per_thread)
            .enumerate()
            .map(|(n, share)| scope.spawn(move || f(n * per_thread, share)))
            .collect();
        running.into_iter().map(|share| share.join()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_items_in_order_and_start_where_they_say() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let items: Vec<usize> = (0..1000).collect();
        for min in [0, 1, 10, 400, 1000, 2000] {
            let shares: Vec<(usize, Vec<usize>)> =
                map_shares(&items, min, |first, share| (first, share.to_vec()))
                    .into_iter()
                    .map(|share| share.unwrap())
                    .collect();
            let want = cores.min(1000 / min.max(1)).max(1);
            assert_eq!(shares.len(), want, "min {min}");
            for (first, share) in &shares {
                assert_eq!(share[0], *first, "min {min}");
            }
            let all: Vec<usize> = shares.into_iter().flat_map(|(_, s)| s).collect();
            assert_eq!(all, items, "min {min}");
        }
        let none: Vec<usize> = Vec::new();
        let shares = map_shares(&none, 1, |first, share| (first, share.len()));
        assert_eq!(shares.len(), 1);
        assert_eq!(*shares[0].as_ref().unwrap(), (0, 0));
    }

    #[test]
    fn a_panicking_share_is_an_error_and_the_others_still_answer() {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            // One core: a single share on the calling thread, whose panic is the
            // caller's (the case above covers that split).
            let caught = std::panic::catch_unwind(|| {
                map_shares(&[1, 2], 1, |_, _| -> () { panic!("boom") })
            });
            assert!(caught.is_err());
            return;
        }
        let items: Vec<usize> = (0..100).collect();
        let shares = map_shares(&items, 1, |first, share| {
            assert!(first != 0, "the first share fails");
            share.len()
        });
        assert!(shares[0].is_err());
        assert!(shares[1..].iter().all(|s| s.is_ok()), "{}", shares.len());
    }
}
