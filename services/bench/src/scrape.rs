//! Reading the services' own `/metrics` (Prometheus text): what a figure's process says about
//! itself, such as how long the gateway waited for JetStream, beside what the bench measured
//! from outside.

use serde_json::{Value, json};

/// The Prometheus text of `GET /metrics` on `addr` (empty if it does not answer).
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    parley_test_support::http::request(addr, "GET", "/metrics", None, None)
        .await
        .raw
}

/// The value of the first sample of `name` (any labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
}

/// The gateway's own wait for JetStream's publish ack between two scrapes of its `/metrics`: its
/// mean, and the share of publishes acknowledged within each bucket's bound. Compared with the
/// client's ack time, it tells how much of a send is the publish.
pub fn publish_ack_between(before: &str, after: &str) -> Value {
    const NAME: &str = "parley_gateway_publish_ack_seconds";
    let delta = |name: &str| Some(metric(after, name)? - metric(before, name).unwrap_or(0.0));
    let (Some(sum), Some(count)) = (delta(&format!("{NAME}_sum")), delta(&format!("{NAME}_count"))) else {
        return json!(null);
    };
    if count <= 0.0 {
        return json!(null);
    }
    let buckets = |text: &str| -> Vec<(String, f64)> {
        let prefix = format!("{NAME}_bucket{{le=\"");
        text.lines()
            .filter_map(|line| {
                let (bound, value) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
                Some((bound.to_owned(), value.parse().ok()?))
            })
            .collect()
    };
    let earlier = buckets(before);
    // Cumulative shares in the exposition's (ascending) order, up to the first bound that holds
    // every publish of the interval.
    let mut within = Vec::new();
    for (bound, value) in buckets(after) {
        // `+Inf` parses as infinity; it holds everything and says nothing.
        let Some(seconds) = bound.parse::<f64>().ok().filter(|s| s.is_finite()) else {
            continue;
        };
        let was = earlier.iter().find(|(b, _)| *b == bound).map_or(0.0, |(_, v)| *v);
        let share = (value - was) / count;
        within.push(json!({ "ms": seconds * 1e3, "share": share }));
        if share >= 1.0 {
            break;
        }
    }
    json!({ "count": count, "meanMs": sum / count * 1e3, "shareWithin": within })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's publish-wait histogram as `/metrics` shows it: publishes acknowledged within
    /// 0.5, 1 and 2.5 ms (cumulative), all of them, and their summed wait.
    fn exposition(within: [u32; 3], count: u32, sum_seconds: f64) -> String {
        let name = "parley_gateway_publish_ack_seconds";
        let [half, one, two_and_a_half] = within;
        format!(
            "# TYPE {name} histogram
{name}_bucket{{le=\"0.0005\"}} {half}
{name}_bucket{{le=\"0.001\"}} {one}
{name}_bucket{{le=\"0.0025\"}} {two_and_a_half}
{name}_bucket{{le=\"+Inf\"}} {count}
{name}_sum {sum_seconds}
{name}_count {count}
"
        )
    }

    #[test]
    fn the_publish_wait_between_two_scrapes_counts_only_what_happened_between_them() {
        let before = exposition([10, 20, 30], 30, 0.02);
        let after = exposition([15, 25, 40], 50, 0.12);
        let between = publish_ack_between(&before, &after);
        assert_eq!(between["count"], 20.0);
        assert!((between["meanMs"].as_f64().unwrap() - 5.0).abs() < 1e-9);
        // 5 of the 20 within 0.5 ms, still 5 within 1 ms, 10 within 2.5 ms; +Inf is left out.
        let within: Vec<(f64, f64)> = between["shareWithin"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["ms"].as_f64().unwrap(), b["share"].as_f64().unwrap()))
            .collect();
        let expected = [(0.5, 0.25), (1.0, 0.25), (2.5, 0.5)];
        assert_eq!(within.len(), expected.len(), "{within:?}");
        for ((ms, share), (want_ms, want_share)) in within.iter().zip(expected) {
            assert!(
                (ms - want_ms).abs() < 1e-9 && (share - want_share).abs() < 1e-9,
                "{within:?}"
            );
        }
    }

    #[test]
    fn no_publish_between_two_scrapes_gives_no_figure() {
        let before = exposition([10, 20, 30], 30, 0.02);
        assert_eq!(publish_ack_between(&before, &before), Value::Null);
        assert_eq!(publish_ack_between("", ""), Value::Null);
        assert_eq!(metric(&before, "parley_gateway_publish_ack_seconds_count"), Some(30.0));
    }
}
