/// A concurrency cap: at most `limit` attempts use the resource at once.
///
/// States: the number of slots in use, from `0` to `limit`. [`enter`](Self::enter) takes a slot
/// when one is free and refuses otherwise; [`leave`](Self::leave) gives one back.
///
/// Trade-offs: it counts and never queues. Who waits, in which order, and when to wake them is the
/// engine's business (it wakes waiters when an attempt on the resource ends), which keeps waiting
/// durable and this type a plain counter. Memory is two integers.
///
/// Misuse does not panic: a `limit` of `0` never has room, and a `leave` without a matching
/// `enter` is ignored rather than wrapping below zero.
///
/// ```
/// use keel_engine::policy::Bulkhead;
///
/// let mut pool = Bulkhead::new(1);
/// assert!(pool.enter());
/// assert!(!pool.enter());
/// pool.leave();
/// assert!(pool.has_room());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bulkhead {
    limit: u32,
    in_use: u32,
}

impl Bulkhead {
    pub fn new(limit: u32) -> Self {
        Bulkhead { limit, in_use: 0 }
    }

    /// Whether [`enter`](Self::enter) would succeed now.
    pub fn has_room(&self) -> bool {
        self.in_use < self.limit
    }

    /// Takes a slot; `false` (and nothing taken) when all `limit` are in use.
    pub fn enter(&mut self) -> bool {
        if !self.has_room() {
            return false;
        }
        self.in_use += 1;
        true
    }

    /// Gives back a slot taken by [`enter`](Self::enter).
    /// Counts an attempt that is already running (one a restarted Keel adopted), even past the
    /// limit: it holds its place until it ends, and newcomers wait for it.
    pub fn occupy(&mut self) {
        self.in_use = self.in_use.saturating_add(1);
    }

    pub fn leave(&mut self) {
        self.in_use = self.in_use.saturating_sub(1);
    }

    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn it_admits_up_to_the_limit_and_no_more() {
        let mut pool = Bulkhead::new(3);
        assert!(pool.enter());
        assert!(pool.enter());
        assert!(pool.enter());
        assert!(!pool.has_room());
        assert!(!pool.enter());
        assert_eq!(pool.in_use(), 3);
        pool.leave();
        assert!(pool.has_room());
        assert!(pool.enter());
        assert_eq!(pool.in_use(), 3);
    }

    #[test]
    fn a_zero_limit_never_has_room() {
        let mut pool = Bulkhead::new(0);
        assert!(!pool.has_room());
        assert!(!pool.enter());
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn an_unmatched_leave_does_not_wrap() {
        let mut pool = Bulkhead::new(2);
        pool.leave();
        assert_eq!(pool.in_use(), 0);
        assert!(pool.enter());
        assert!(pool.enter());
        assert!(!pool.enter());
    }

    proptest! {
        /// Any interleaving of enters and leaves keeps the count equal to the slots really
        /// held, and never above the limit.
        #[test]
        fn never_exceeds_the_limit(
            limit in 0u32..8,
            operations in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let mut pool = Bulkhead::new(limit);
            let mut held = 0u32;
            for enter in operations {
                if enter {
                    let room = pool.has_room();
                    let entered = pool.enter();
                    prop_assert_eq!(room, entered);
                    if entered {
                        held += 1;
                    }
                } else if held > 0 {
                    pool.leave();
                    held -= 1;
                }
                prop_assert_eq!(pool.in_use(), held);
                prop_assert!(pool.in_use() <= limit);
            }
        }
    }
}
