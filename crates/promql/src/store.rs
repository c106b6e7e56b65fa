//! The in-memory series store: what a Prometheus TSDB head block is to the engine, minus
//! everything cutover does not need (WAL, native histograms, staleness markers).

use std::collections::{BTreeMap, VecDeque};

use crate::exposition::parse_exposition;
use crate::{Labels, PromqlError, SeriesDump};

/// In-memory series store with bounded retention.
///
/// Retention is measured against the newest timestamp ever appended, not a clock, so the
/// store stays deterministic and replayable.
#[derive(Debug, Clone)]
pub struct MemStore {
    retention_ms: i64,
    series: BTreeMap<Labels, VecDeque<(i64, f64)>>,
    newest: Option<i64>,
    /// When the whole store was last pruned; pruning every series on every append would make
    /// ingestion quadratic, so idle series are swept every quarter of the retention.
    last_sweep: i64,
}

impl MemStore {
    /// A store keeping samples no older than `retention_ms` before the newest one seen.
    pub fn new(retention_ms: i64) -> MemStore {
        MemStore {
            retention_ms: retention_ms.max(0),
            series: BTreeMap::new(),
            newest: None,
            last_sweep: i64::MIN,
        }
    }

    /// Appends one sample; samples older than (newest seen timestamp - retention) are dropped;
    /// a sample not newer than the series' last one is ignored (Prometheus rejects
    /// out-of-order and duplicate samples).
    ///
    /// Labels with an empty value are removed first: Prometheus treats `l=""` as the label
    /// being absent, and keeping both spellings would split one series in two.
    pub fn append(&mut self, mut labels: Labels, t_ms: i64, value: f64) {
        labels.retain(|_, v| !v.is_empty());
        let newest = self.newest.map_or(t_ms, |n| n.max(t_ms));
        self.newest = Some(newest);
        let cutoff = newest.saturating_sub(self.retention_ms);
        if t_ms >= cutoff {
            let samples = self.series.entry(labels).or_default();
            if samples.back().is_none_or(|&(last, _)| t_ms > last) {
                samples.push_back((t_ms, value));
            }
            while samples.front().is_some_and(|&(t, _)| t < cutoff) {
                samples.pop_front();
            }
        }
        if newest.saturating_sub(self.last_sweep) >= (self.retention_ms / 4).max(1) {
            self.last_sweep = newest;
            self.prune(cutoff);
        }
    }

    fn prune(&mut self, cutoff: i64) {
        self.series.retain(|_, samples| {
            while samples.front().is_some_and(|&(t, _)| t < cutoff) {
                samples.pop_front();
            }
            !samples.is_empty()
        });
    }

    /// Parses a Prometheus text exposition (format 0.0.4) and appends every sample at `t_ms`
    /// with the `target` labels added, as a Prometheus scrape with `honor_labels: false` and
    /// `honor_timestamps: false` would: timestamps in the exposition are ignored, and an
    /// exposed label that clashes with a target label is renamed `exported_<name>` (prefixed
    /// again while that name is taken) so the target's value wins.
    ///
    /// Returns the number of samples in the exposition. Nothing is appended if any line is
    /// malformed, so a half-parsed scrape never looks like partial data.
    pub fn append_exposition(
        &mut self,
        text: &str,
        t_ms: i64,
        target: &Labels,
    ) -> Result<usize, PromqlError> {
        let parsed = parse_exposition(text)?;
        let n = parsed.len();
        for (labels, value) in parsed {
            self.append(with_target_labels(labels, target), t_ms, value);
        }
        Ok(n)
    }

    /// Every series with its retained samples, in label order.
    pub fn export(&self) -> Vec<SeriesDump> {
        self.series
            .iter()
            .map(|(labels, samples)| SeriesDump {
                labels: labels.clone(),
                samples: samples.iter().copied().collect(),
            })
            .collect()
    }

    /// Appends every sample of `dump` with the same rules as [`MemStore::append`].
    pub fn import(&mut self, dump: Vec<SeriesDump>) {
        for series in dump {
            for (t, v) in series.samples {
                self.append(series.labels.clone(), t, v);
            }
        }
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when the store holds no series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Iterates over every series with its samples (oldest first).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Labels, &VecDeque<(i64, f64)>)> {
        self.series.iter()
    }
}

/// Prometheus's `mutateSampleLabels` with `honor_labels: false`.
fn with_target_labels(mut labels: Labels, target: &Labels) -> Labels {
    for (name, value) in target {
        if let Some(exposed) = labels.remove(name) {
            if !exposed.is_empty() {
                let mut new_name = format!("exported_{name}");
                while labels.contains_key(&new_name) || target.contains_key(&new_name) {
                    new_name = format!("exported_{new_name}");
                }
                labels.insert(new_name, exposed);
            }
        }
        labels.insert(name.clone(), value.clone());
    }
    labels
}
