//! `weighted_round_robin`: smooth weighted round robin by earliest deadline
//! first (as Envoy schedules weighted hosts). Each endpoint is due every
//! 1/weight; the one due soonest is picked and rescheduled. Over any run of
//! picks each endpoint's share follows its weight, spread evenly, and a
//! weight that changes (slow start) takes effect at the next reschedule.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};

use super::SlowStart;
use crate::endpoint::Endpoint;
use crate::sync::lock;

#[derive(Debug)]
pub(crate) struct Edf {
    state: Mutex<Schedule>,
}

#[derive(Debug)]
struct Schedule {
    queue: BinaryHeap<Due>,
    /// Breaks ties in insertion order, so equal weights alternate.
    sequence: u64,
}

#[derive(Debug)]
struct Due {
    at: f64,
    sequence: u64,
    index: u32,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed, so the max-heap pops the earliest deadline.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then(other.sequence.cmp(&self.sequence))
    }
}

impl Edf {
    pub(crate) fn new(endpoints: &[Arc<Endpoint>]) -> Edf {
        let queue = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| Due {
                at: 1.0 / f64::from(e.weight.get()),
                sequence: i as u64,
                index: i as u32,
            })
            .collect();
        Edf {
            state: Mutex::new(Schedule {
                queue,
                sequence: endpoints.len() as u64,
            }),
        }
    }

    pub(crate) fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        slow_start: Option<&SlowStart>,
    ) -> Option<&'a Arc<Endpoint>> {
        let mut state = lock(&self.state);
        let due = state.queue.pop()?;
        let endpoint = &endpoints[due.index as usize];
        let factor = slow_start.map_or(1.0, |s| s.factor(endpoint));
        let weight = f64::from(endpoint.weight.get()) * factor;
        let sequence = state.sequence;
        state.sequence += 1;
        state.queue.push(Due {
            at: due.at + 1.0 / weight,
            sequence,
            index: due.index,
        });
        Some(endpoint)
    }
}
