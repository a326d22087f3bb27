//! The Prometheus text exposition format 0.0.4 (`# HELP`, `# TYPE`, one line per
//! sample), written by hand: a few dozen lines, and no registry to keep in step with
//! state the flows already hold. `promtool check metrics` judges the output in the
//! integration test.

use std::fmt::Write as _;

/// Label pairs of one sample, in order.
#[derive(Debug, Clone, Default)]
pub struct Labels(Vec<(&'static str, String)>);

impl Labels {
    #[must_use]
    pub fn new() -> Self {
        Self(Vec::new())
    }

    #[must_use]
    pub fn with(mut self, name: &'static str, value: &str) -> Self {
        self.0.push((name, value.to_owned()));
        self
    }

    fn write(&self, out: &mut String) {
        if self.0.is_empty() {
            return;
        }
        out.push('{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
}

/// One metric family: its header and samples. The header is written also without
/// samples (an error counter before the first error), so that dashboards and
/// `absent()` alerts can tell "none yet" from "not exported".
pub struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    body: String,
}

impl Family {
    #[must_use]
    pub fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self { name, kind, help, body: String::new() }
    }

    pub fn sample(&mut self, labels: &Labels, value: f64) {
        self.sample_suffixed("", labels, value);
    }

    /// A sample of `name` + `suffix` (a histogram's `_bucket`, `_sum`, `_count`).
    pub fn sample_suffixed(&mut self, suffix: &str, labels: &Labels, value: f64) {
        self.body.push_str(self.name);
        self.body.push_str(suffix);
        labels.write(&mut self.body);
        self.body.push(' ');
        if value.is_finite() {
            let _ = write!(self.body, "{value}");
        } else if value.is_nan() {
            self.body.push_str("NaN");
        } else {
            self.body.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        }
        self.body.push('\n');
    }

    /// Writes a gauge of one unlabelled sample.
    pub fn write_gauge(out: &mut String, name: &'static str, help: &'static str, value: f64) {
        let mut f = Self::new(name, "gauge", help);
        f.sample(&Labels::new(), value);
        f.write(out);
    }

    pub fn write(self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        out.push_str(&self.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaping() {
        let mut f = Family::new("x_total", "counter", "An x.");
        f.sample(&Labels::new().with("flow", "a->b").with("topic", "q\"u\\o\nte"), 3.0);
        f.sample(&Labels::new(), 0.5);
        let mut out = String::new();
        f.write(&mut out);
        Family::new("empty", "gauge", "No samples yet.").write(&mut out);
        assert_eq!(
            out,
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total{flow=\"a->b\",topic=\"q\\\"u\\\\o\\nte\"} 3\nx_total 0.5\n\
             # HELP empty No samples yet.\n# TYPE empty gauge\n"
        );
    }
}
