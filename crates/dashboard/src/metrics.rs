//! The Prometheus text exposition (format 0.0.4) of a [`ClusterView`], so a
//! job can be scraped and graphed next to everything else a site runs.
//!
//! Instance series carry `operator`, `instance` (the index within the
//! operator) and `worker` labels. The worker label changes when an instance
//! is restored elsewhere, which starts a new series: that is what a person
//! looking at a recovery wants to see.

use std::fmt::Write;

use spate_engine::coordinator::view::{ClusterView, InstanceView};

/// The media type Prometheus expects for this format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One per-instance series: name, type, help, and how to read it.
struct InstanceMetric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&InstanceView) -> f64,
}

const INSTANCE_METRICS: &[InstanceMetric] = &[
    InstanceMetric {
        name: "spate_instance_utilization",
        kind: "gauge",
        help: "CPU time of the instance over wall time in the last interval (1 = one core).",
        value: |i| i.utilization,
    },
    InstanceMetric {
        name: "spate_instance_in_rate",
        kind: "gauge",
        help: "Tuples processed per second in the last interval.",
        value: |i| i.in_rate,
    },
    InstanceMetric {
        name: "spate_instance_out_rate",
        kind: "gauge",
        help: "Tuples sent per second in the last interval.",
        value: |i| i.out_rate,
    },
    InstanceMetric {
        name: "spate_instance_tuples_in_total",
        kind: "counter",
        help: "Tuples processed by the instance.",
        value: |i| i.tuples_in as f64,
    },
    InstanceMetric {
        name: "spate_instance_tuples_out_total",
        kind: "counter",
        help: "Tuples sent by the instance.",
        value: |i| i.tuples_out as f64,
    },
    InstanceMetric {
        name: "spate_instance_queued_batches",
        kind: "gauge",
        help: "Input batches waiting to be processed.",
        value: |i| i.queued_batches as f64,
    },
    InstanceMetric {
        name: "spate_instance_buffered_bytes",
        kind: "gauge",
        help: "Output bytes held for replay until downstream checkpoints cover them.",
        value: |i| i.buffered_bytes as f64,
    },
];

/// Escapes a label value as the exposition format requires.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Formats a sample value; Prometheus spells the non-finite ones its own way.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    let _ = if labels.is_empty() {
        writeln!(out, "{name} {}", number(value))
    } else {
        writeln!(out, "{name}{{{labels}}} {}", number(value))
    };
}

/// Renders the whole view as one scrape.
pub(crate) fn render(view: &ClusterView) -> String {
    let mut out = String::new();
    let cluster: [(&str, &str, &str, String, f64); 6] = [
        (
            "spate_job_info",
            "gauge",
            "The job's query and state, as labels; always 1.",
            format!(
                "query=\"{}\",state=\"{}\"",
                label(&view.query),
                label(view.state.as_str())
            ),
            1.0,
        ),
        (
            "spate_job_elapsed_seconds",
            "gauge",
            "Seconds since the job started.",
            String::new(),
            view.elapsed_ms as f64 / 1000.0,
        ),
        (
            "spate_workers_alive",
            "gauge",
            "Worker processes alive, idle pool workers included.",
            String::new(),
            view.workers.iter().filter(|w| w.alive).count() as f64,
        ),
        (
            "spate_pool_size",
            "gauge",
            "Idle workers kept ready for recovery and scale out.",
            String::new(),
            view.workers.iter().filter(|w| w.alive && w.pool).count() as f64,
        ),
        (
            "spate_checkpoints_total",
            "counter",
            "Checkpoints backed up.",
            String::new(),
            view.checkpoints as f64,
        ),
        (
            "spate_recoveries_total",
            "counter",
            "Failures recovered from (or being recovered from).",
            String::new(),
            view.recoveries.len() as f64,
        ),
    ];
    for (name, kind, help, labels, value) in &cluster {
        header(&mut out, name, kind, help);
        sample(&mut out, name, labels, *value);
    }

    header(
        &mut out,
        "spate_operator_partitions",
        "gauge",
        "Instances (partitions) of each operator.",
    );
    for op in &view.operators {
        let labels = format!("operator=\"{}\"", label(&op.name));
        sample(
            &mut out,
            "spate_operator_partitions",
            &labels,
            op.instances.len() as f64,
        );
    }

    for metric in INSTANCE_METRICS {
        header(&mut out, metric.name, metric.kind, metric.help);
        for op in &view.operators {
            let operator = label(&op.name);
            for i in &op.instances {
                let labels = format!(
                    "operator=\"{operator}\",instance=\"{}\",worker=\"{}\"",
                    i.index, i.worker
                );
                sample(&mut out, metric.name, &labels, (metric.value)(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
    }

    #[test]
    fn non_finite_numbers_use_prometheus_spelling() {
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(3.0), "3");
    }

    #[test]
    fn every_sample_line_is_name_labels_value() {
        let mut view = ClusterView {
            query: "q\"x".into(),
            state: spate_engine::coordinator::JobState::Running,
            ..ClusterView::default()
        };
        view.operators
            .push(spate_engine::coordinator::view::OperatorView {
                name: "op".into(),
                kind: "Stateful".into(),
                instances: vec![InstanceView::default()],
            });
        let text = render(&view);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            assert!(series.starts_with("spate_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains(r#"spate_job_info{query="q\"x",state="running"} 1"#));
    }
}
