//! One measured figure, its baseline from the same run, and the goal it is held to.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    /// e.g. "Persistence throughput".
    pub name: String,
    pub value: f64,
    /// e.g. "messages/s".
    pub unit: String,
    pub baseline_name: String,
    pub baseline_value: f64,
    /// value / baseline (or baseline / value where lower is better; see `higher_is_better`).
    pub ratio: f64,
    pub higher_is_better: bool,
    /// e.g. "≥ 15× the naive worker".
    pub goal: String,
    pub goal_met: bool,
    /// Anything else worth keeping: percentiles, sizes, counts, checks performed.
    pub details: serde_json::Value,
}

impl Figure {
    /// A figure where more is better; the goal is `ratio >= min_ratio`.
    #[allow(clippy::too_many_arguments)]
    pub fn higher(
        name: &str,
        value: f64,
        unit: &str,
        baseline_name: &str,
        baseline_value: f64,
        min_ratio: f64,
        goal: &str,
        details: serde_json::Value,
    ) -> Figure {
        let ratio = if baseline_value > 0.0 {
            value / baseline_value
        } else {
            0.0
        };
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline_name: baseline_name.into(),
            baseline_value,
            ratio,
            higher_is_better: true,
            goal: goal.into(),
            goal_met: ratio >= min_ratio,
            details,
        }
    }

    /// A figure where less is better (latency, memory); the goal is `value / baseline <= max_ratio`.
    #[allow(clippy::too_many_arguments)]
    pub fn lower(
        name: &str,
        value: f64,
        unit: &str,
        baseline_name: &str,
        baseline_value: f64,
        max_ratio: f64,
        goal: &str,
        details: serde_json::Value,
    ) -> Figure {
        let ratio = if baseline_value > 0.0 {
            value / baseline_value
        } else {
            f64::INFINITY
        };
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline_name: baseline_name.into(),
            baseline_value,
            ratio,
            higher_is_better: false,
            goal: goal.into(),
            goal_met: ratio <= max_ratio,
            details,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "{}: {:.1} {} vs {} {:.1} → ×{:.2} (goal {}: {})",
            self.name,
            self.value,
            self.unit,
            self.baseline_name,
            self.baseline_value,
            self.ratio,
            self.goal,
            if self.goal_met { "met" } else { "missed" }
        )
    }
}

/// Percentile `p` (0..=100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
