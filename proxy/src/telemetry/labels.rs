//! Counters for a label whose values are a fixed set known at registration
//! (a timeout kind, a retry reason, a rejection reason): one counter per
//! value, registered once and found by the value's index, so counting is an
//! array read with no lookup per event. Every such family in the proxy
//! goes through [`CountersBy`].

use std::marker::PhantomData;

use metrics::Counter;

use super::Telemetry;

/// A label's closed set of values.
pub(crate) trait LabelValue: Copy + 'static {
    /// Every value, each at its [`index`](Self::index).
    const ALL: &'static [Self];

    /// The value as the label shows it.
    fn label(self) -> &'static str;

    /// The value's position in [`ALL`](Self::ALL).
    fn index(self) -> usize;
}

/// Implements [`LabelValue`] for a fieldless enum: every variant, in
/// declaration order, with its label.
macro_rules! label_values {
    ($ty:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        impl $crate::telemetry::LabelValue for $ty {
            const ALL: &'static [$ty] = &[$($ty::$variant),+];

            fn label(self) -> &'static str {
                match self {
                    $($ty::$variant => $label),+
                }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}
pub(crate) use label_values;

/// One counter per value of `K`, under one metric name and fixed labels.
#[derive(Debug, Clone)]
pub(crate) struct CountersBy<K> {
    counters: Box<[Counter]>,
    key: PhantomData<K>,
}

impl<K: LabelValue> CountersBy<K> {
    /// Registers `name{labels…, label_name=value}` for every value of `K`.
    pub(crate) fn register(
        telemetry: &Telemetry,
        name: &'static str,
        labels: &[(&'static str, &str)],
        label_name: &'static str,
    ) -> Self {
        Self::register_with(&telemetry.recorder, name, labels, label_name)
    }

    /// [`register`](Self::register) after the snapshot is compiled (a
    /// label value seen at run time).
    pub(crate) fn register_with(
        recorder: &metrics_exporter_prometheus::PrometheusRecorder,
        name: &'static str,
        labels: &[(&'static str, &str)],
        label_name: &'static str,
    ) -> Self {
        use metrics::Recorder as _;
        let counters = K::ALL
            .iter()
            .enumerate()
            .map(|(i, value)| {
                debug_assert_eq!(value.index(), i, "LabelValue::ALL is in index order");
                let mut all = labels.to_vec();
                all.push((label_name, value.label()));
                recorder.register_counter(&super::key(name, &all), &super::METADATA)
            })
            .collect();
        CountersBy {
            counters,
            key: PhantomData,
        }
    }

    pub(crate) fn get(&self, value: K) -> &Counter {
        &self.counters[value.index()]
    }

    pub(crate) fn increment(&self, value: K) {
        self.get(value).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Colour {
        Red,
        Blue,
    }

    label_values!(Colour {
        Red => "red",
        Blue => "blue",
    });

    #[test]
    fn each_value_counts_under_its_own_label() {
        let telemetry = Telemetry::new();
        let counters =
            CountersBy::<Colour>::register(&telemetry, "t_total", &[("a", "b")], "colour");
        counters.increment(Colour::Blue);
        counters.increment(Colour::Blue);
        counters.increment(Colour::Red);
        let text = telemetry.render();
        assert!(text.contains(r#"t_total{a="b",colour="blue"} 2"#), "{text}");
        assert!(text.contains(r#"t_total{a="b",colour="red"} 1"#), "{text}");
    }

    fn in_index_order<K: LabelValue + std::fmt::Debug>() {
        for (i, value) in K::ALL.iter().enumerate() {
            assert_eq!(value.index(), i, "{value:?} is out of order in ALL");
        }
    }

    #[test]
    fn every_label_enum_lists_its_values_in_index_order() {
        in_index_order::<crate::cluster::TimeoutKind>();
        in_index_order::<crate::config::RetryOn>();
        in_index_order::<crate::breaker::Limit>();
        in_index_order::<crate::listener::Refusal>();
        in_index_order::<super::super::StatusClass>();
    }
}
