//! Locking without poison handling at every call site. A panic while a
//! lock is held is a bug, but the proxy keeps serving: the data behind
//! these locks is left consistent by every holder (each critical section
//! either completes its update or changes nothing), so a poisoned lock is
//! taken as it is.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking it over from a holder that panicked.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
