//! The report: `report.json` (every figure with its details, the machine, the versions) and
//! `report.md` (one table a reader can take in at a glance).

use std::path::PathBuf;

use serde_json::json;

use crate::{Context, Figure};

fn machine() -> serde_json::Value {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    json!({ "cores": cores, "memoryGiB": (memory_kib as f64 / 1_048_576.0 * 10.0).round() / 10.0, "cpu": cpu })
}

fn version_of(command: &str, args: &[&str]) -> String {
    std::process::Command::new(command)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Writes both files; returns the markdown's path.
pub fn write(context: &Context, figures: &[Figure]) -> anyhow::Result<PathBuf> {
    let nats = std::env::var("PARLEY_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let versions = json!({
        "parley": env!("CARGO_PKG_VERSION"),
        "natsServer": version_of(&nats, &["--version"]),
        "postgres": version_of("psql", &["--version"]),
        "node": version_of("node", &["--version"]),
        "rustc": version_of("rustc", &["--version"]),
    });
    let nats_config = if context.cluster {
        Some("nats/cluster/node-{1,2,3}.conf".to_owned())
    } else {
        context.nats_config().map(|path| path.display().to_string())
    };
    let report = json!({
        "mode": format!("{:?}", context.mode).to_lowercase(),
        "natsConfig": nats_config,
        "machine": machine(),
        "versions": versions,
        "figures": figures,
    });
    std::fs::write(context.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;

    let mut md = String::from("# Parley benchmark report\n\n");
    md.push_str(&format!(
        "Mode: {}. Machine: {} cores, {} GiB ({}). nats-server {}, {}, node {}.\n\n",
        report["mode"].as_str().unwrap_or(""),
        report["machine"]["cores"],
        report["machine"]["memoryGiB"],
        report["machine"]["cpu"].as_str().unwrap_or(""),
        report["versions"]["natsServer"].as_str().unwrap_or(""),
        report["versions"]["postgres"].as_str().unwrap_or(""),
        report["versions"]["node"].as_str().unwrap_or(""),
    ));
    if context.cluster {
        md.push_str(
            "NATS is a three-node cluster on this machine, each node from its file in `nats/cluster/` \
             (`sync_interval: always`: every JetStream write fsynced before it is acknowledged), every \
             stream replicated three times (`PARLEY_STREAM_REPLICAS=3`); the baselines publish to the \
             same cluster in the same run. ",
        );
    }
    md.push_str(&format!(
        "NATS runs with {}, which fsyncs every JetStream write before acknowledging it, as every stack \
         Parley ships does. Rows marked \"NATS without fsync\" repeat a part on nats-server's defaults \
         (an fsync every two minutes), where the processes' own cost per message shows instead of the \
         disk's. The gateways run with every limit off (`PARLEY_SEND_RATE`, `PARLEY_EVENT_RATE` and \
         `PARLEY_MAX_SOCKETS_PER_USER` at 0): a figure is what the processes carry, not what one user \
         is allowed.\n\n",
        nats_config.as_deref().unwrap_or("nats-server's defaults"),
    ));
    md.push_str("| figure | Parley | baseline (same run) | ratio | goal | met |\n|---|---|---|---|---|---|\n");
    for f in figures {
        md.push_str(&format!(
            "| {} | {:.1} {} | {}: {:.1} | ×{:.2} | {} | {} |\n",
            f.name,
            f.value,
            f.unit,
            f.baseline_name,
            f.baseline_value,
            f.ratio,
            f.goal,
            if f.goal_met { "yes" } else { "**no**" }
        ));
    }
    md.push_str("\nDetails (percentiles, sizes, checks) are in `report.json`.\n");
    let mut cpu_lines = String::new();
    for f in figures {
        if let Some(cpu) = f.details["cpuAtFigure"].as_object() {
            let used: Vec<String> = cpu
                .iter()
                .map(|(process, used)| {
                    format!(
                        "{process} {:.2} cores ({:.1} µs per message)",
                        used["cores"].as_f64().unwrap_or(0.0),
                        used["microsPerMessage"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            cpu_lines.push_str(&format!("- {}: {}\n", f.name, used.join(", ")));
        }
    }
    if !cpu_lines.is_empty() {
        md.push_str("\nWhere the CPU went while each figure was measured (every process shares the same cores):\n\n");
        md.push_str(&cpu_lines);
    }
    for f in figures {
        if let Some(picture) = f.details["picture"].as_str() {
            md.push_str(&format!("\n![{}]({picture})\n", f.name));
        }
    }
    let path = context.out.join("report.md");
    std::fs::write(&path, md)?;
    Ok(path)
}
