//! `mirrorproxy bench`'s results: the summary it prints, `bench.json` and `bench.png`
//! (the latency CDF beside the throughput over time).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::bench::BenchArgs;

/// One progress tick.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    pub records_per_s: f64,
    /// Record batch bytes arriving on the target.
    pub mb_per_s: f64,
    pub lag: u64,
}

pub struct Report {
    json: Value,
    hist: Histogram<u64>,
    timeline: Vec<Sample>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        a: &BenchArgs,
        topic: &str,
        seconds: f64,
        bytes: &AtomicU64,
        hist: Histogram<u64>,
        cpu_seconds: Option<f64>,
        peak_rss: Option<u64>,
        timeline: Vec<Sample>,
    ) -> Self {
        let bytes = bytes.load(Ordering::Relaxed);
        let records = hist.len();
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        let gb = bytes as f64 / 1e9;
        let json = json!({
            "flow": a.flow,
            "topic": topic,
            "settings": {
                "records": a.records, "record_size": a.record_size, "codec": a.codec,
                "batch_records": a.batch_records, "rate": a.rate, "partitions": a.partitions,
            },
            "records": records,
            "seconds": seconds,
            "records_per_s": records as f64 / seconds,
            "payload_mb_per_s": (records * a.record_size as u64) as f64 / seconds / 1e6,
            "batch_bytes": bytes,
            "mb_per_s": bytes as f64 / seconds / 1e6,
            "latency_ms": {
                "p50": ms(0.5), "p99": ms(0.99), "p99.9": ms(0.999), "max": hist.max() as f64 / 1000.0,
                "mean": hist.mean() / 1000.0,
            },
            "proxy": {
                "cpu_seconds": cpu_seconds,
                "cpu_s_per_gb": cpu_seconds.filter(|_| gb > 0.0).map(|c| c / gb),
                "peak_rss_mb": peak_rss.map(|b| b as f64 / 1e6),
            },
            "timeline": timeline.iter().map(|s| json!([s.t, s.records_per_s, s.mb_per_s, s.lag])).collect::<Vec<_>>(),
        });
        Self { json, hist, timeline }
    }
}

/// Prints the summary and writes `bench.json` and `bench.png` into `out`.
pub fn write(out: &Path, report: &Report) -> Result<(), String> {
    let j = &report.json;
    let num = |v: &Value| v.as_f64().map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nbench {}: {} records in {} s: {} records/s, {} MB/s on the target ({} MB/s of values)",
        j["flow"].as_str().unwrap_or(""),
        j["records"],
        num(&j["seconds"]),
        num(&j["records_per_s"]),
        num(&j["mb_per_s"]),
        num(&j["payload_mb_per_s"])
    );
    let lat = &j["latency_ms"];
    let _ = writeln!(
        text,
        "latency (create time to arrival on the target), ms: p50 {}  p99 {}  p99.9 {}  max {}",
        num(&lat["p50"]),
        num(&lat["p99"]),
        num(&lat["p99.9"]),
        num(&lat["max"])
    );
    let proxy = &j["proxy"];
    let _ = writeln!(
        text,
        "mirror process: {} CPU-s ({} CPU-s per GB), peak RSS {} MB",
        num(&proxy["cpu_seconds"]),
        num(&proxy["cpu_s_per_gb"]),
        num(&proxy["peak_rss_mb"])
    );
    print!("{text}");
    let json_path = out.join("bench.json");
    let pretty = serde_json::to_string_pretty(j).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, pretty).map_err(|e| format!("{}: {e}", json_path.display()))?;
    let png = out.join("bench.png");
    match plot(&png, report) {
        Ok(()) => println!("wrote {} and {}", json_path.display(), png.display()),
        Err(e) => {
            println!("wrote {}", json_path.display());
            eprintln!("bench: no plot: {e}");
        }
    }
    Ok(())
}

/// DejaVu Sans from the usual places (Debian: fonts-dejavu-core).
fn font() -> Result<&'static [u8], String> {
    let found = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .ok_or("no DejaVuSans.ttf found (Debian: apt-get install fonts-dejavu-core)")?;
    Ok(Box::leak(found.into_boxed_slice()))
}

fn plot(path: &Path, r: &Report) -> Result<(), String> {
    use plotters::prelude::*;
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, font()?)
                .map_err(|_| "cannot load the font".to_owned())
        })
        .clone()?;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(700);
    // Latency CDF: one point per recorded value (hdrhistogram's buckets, 3 digits).
    let total = r.hist.len().max(1) as f64;
    let mut seen = 0u64;
    let cdf: Vec<(f64, f64)> = r
        .hist
        .iter_recorded()
        .map(|v| {
            seen += v.count_at_value();
            ((v.value_iterated_to() as f64 / 1000.0).max(0.001), seen as f64 / total)
        })
        .collect();
    let xmin = cdf.first().map_or(0.1, |p| p.0) / 2.0;
    let xmax = cdf.iter().map(|p| p.0).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&left)
        .caption("End-to-end latency (CDF)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0.0..1.0)
        .map_err(|x| e(&x))?;
    chart.configure_mesh().x_desc("ms (log)").y_desc("fraction of records").draw().map_err(|x| e(&x))?;
    chart.draw_series(LineSeries::new(cdf, BLUE.stroke_width(3))).map_err(|x| e(&x))?;
    // Throughput over time.
    let tmax = r.timeline.last().map_or(1.0, |s| s.t).max(1.0);
    let ymax = r.timeline.iter().map(|s| s.mb_per_s).fold(0.0, f64::max).max(0.1) * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption("Throughput on the target", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax)
        .map_err(|x| e(&x))?;
    chart.configure_mesh().x_desc("seconds").y_desc("MB/s").draw().map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(r.timeline.iter().map(|s| (s.t, s.mb_per_s)), RED.stroke_width(3)))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
