//! The benchmark harness: output.
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

pub(crate) fn print_table(results: &[Value]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n{:<12} {:<18} {:>6} {:<5} {:>9} {:>11} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "mode", "peer", "size", "codec", "MB/s", "records/s", "CPU-s/GB", "CPU %", "RSS MB", "p50 ms", "p99 ms"
    );
    for r in results {
        if let Some(e) = r.get("error") {
            let _ = writeln!(out, "{:<10} error: {e}", r["mode"].as_str().unwrap_or(""));
            continue;
        }
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let lat = |q: &str| {
            r.get("latency_us").and_then(|l| l[q].as_f64()).map_or("-".to_string(), |v| format!("{:.2}", v / 1000.0))
        };
        let mut line = format!(
            "{:<12} {:<18} {:>6} {:<5} {:>9.1} {:>11.0} {:>9.3} {:>8.0} {:>8.1} {:>9} {:>9}",
            r["mode"].as_str().unwrap_or(""),
            r["peer"].as_str().unwrap_or(""),
            r["size"],
            r["codec"].as_str().unwrap_or(""),
            f("mb_per_s"),
            f("records_per_s"),
            f("cpu_s_per_gb"),
            f("cpu_util") * 100.0,
            f("peak_rss_mb"),
            lat("p50"),
            lat("p99")
        );
        if let Some(u) = r.get("link_utilization").and_then(Value::as_f64) {
            line += &format!("  link {:.0}% of {:.1} MB/s", u * 100.0, f("link_mb_per_s"));
        }
        if let Some(s) = r.get("latency_us_source") {
            line += &format!(
                "  (source-only p50 {:.2} / p99 {:.2} ms)",
                s["p50"].as_f64().unwrap_or(0.0) / 1000.0,
                s["p99"].as_f64().unwrap_or(0.0) / 1000.0
            );
        }
        if r.get("latency_rereads").is_some() {
            let n = |v: &Value, i: usize| v.get(i).and_then(Value::as_u64).unwrap_or(0);
            let (re, d) = (&r["latency_rereads"], &r["latency_payload_dups"]);
            line += &format!(" re-read {}/{}", n(re, 0), n(re, 1));
            if n(d, 0) + n(d, 1) > 0 {
                line += &format!(" dup records {}/{}", n(d, 0), n(d, 1));
            }
        }
        if r.get("peer_exited").and_then(Value::as_bool) == Some(true) {
            line += "  PEER EXITED during a run (see logs/)";
        }
        if r.get("drained").and_then(Value::as_bool) == Some(false) {
            line += "  NOT DRAINED";
        }
        let _ = writeln!(out, "{line}");
    }
    // Ratios for the targets (isolation, 1 KB uncompressed).
    let find = |mode: &str, peer: &str, size: u64, codec: &str| {
        results
            .iter()
            .find(|r| r["mode"] == mode && r["peer"] == peer && r["size"].as_u64() == Some(size) && r["codec"] == codec)
    };
    if let (Some(p), Some(rd), Some(rel)) = (
        find("isolation", "mirrorproxy", 1000, "none"),
        find("isolation", "librdkafka-mirror", 1000, "none"),
        find("isolation", "tcp-relay", 1000, "none"),
    ) {
        let g = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(out, "\ntargets (isolation, 1 KB, uncompressed, medians):");
        let _ = writeln!(
            out,
            "  records/s vs librdkafka mirror: {:.1}x (target >= 5x)",
            g(p, "records_per_s") / g(rd, "records_per_s")
        );
        let _ = writeln!(
            out,
            "  bytes/s vs raw TCP relay:       {:.0}% (target >= 50%)",
            100.0 * g(p, "mb_per_s") / g(rel, "mb_per_s")
        );
        let _ = writeln!(out, "  CPU-s per GB:                   {:.3} (target <= 0.25)", g(p, "cpu_s_per_gb"));
        let _ = writeln!(
            out,
            "  peak RSS:                       {:.1} MB (target <= 64 MB + buffer_bytes 268 MB)",
            g(p, "peak_rss_mb")
        );
    }
    real_ratios(&mut out, results);
    let sizes: std::collections::BTreeSet<u64> =
        results.iter().filter(|r| r["mode"] == "tls-target").filter_map(|r| r["size"].as_u64()).collect();
    for size in sizes {
        if let (Some(p), Some(t)) =
            (find("plain-target", "mirrorproxy", size, "none"), find("tls-target", "mirrorproxy", size, "none"))
        {
            let g = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "\nTLS on the target link ({size} B records, medians): throughput {:.0}% of plaintext \
                 ({:.1} vs {:.1} MB/s); proxy CPU-s per GB {:.3} vs {:.3} (+{:.3})",
                100.0 * g(t, "mb_per_s") / g(p, "mb_per_s"),
                g(t, "mb_per_s"),
                g(p, "mb_per_s"),
                g(t, "cpu_s_per_gb"),
                g(p, "cpu_s_per_gb"),
                g(t, "cpu_s_per_gb") - g(p, "cpu_s_per_gb")
            );
            // On a small machine the sink's decryption shares the cores with the proxy:
            // with every core busy, throughput is cores over the CPU all of them spend
            // per GB, not the proxy's alone.
            let _ = writeln!(
                out,
                "  sink (this harness) CPU-s per GB {:.3} vs {:.3} (+{:.3}); machine busy {:.0}% vs {:.0}% of all cores",
                g(t, "harness_cpu_s_per_gb"),
                g(p, "harness_cpu_s_per_gb"),
                g(t, "harness_cpu_s_per_gb") - g(p, "harness_cpu_s_per_gb"),
                100.0 * g(t, "machine_busy"),
                100.0 * g(p, "machine_busy")
            );
        }
    }
}

/// Issue #12's targets through tansu: per round, mirrorproxy's records/s over the
/// librdkafka mirror's and the mirror's CPU per GB over the proxy's; then the medians.
/// A round where either peer did not drain, failed or exited counts for neither.
fn real_ratios(out: &mut impl std::io::Write, results: &[Value]) {
    let run = |peer: &str, round: u64| {
        results.iter().find(|r| r["mode"] == "real" && r["peer"] == peer && r["round"].as_u64() == Some(round))
    };
    let rounds = results.iter().filter(|r| r["mode"] == "real").filter_map(|r| r["round"].as_u64()).max();
    let Some(rounds) = rounds else { return };
    let (mut speed, mut cpu, mut spoilt) = (Vec::new(), Vec::new(), 0);
    for round in 1..=rounds {
        let (Some(p), Some(n)) = (run("mirrorproxy", round), run("librdkafka-mirror", round)) else { continue };
        let good = |r: &Value| {
            r.get("error").is_none()
                && r["drained"].as_bool() == Some(true)
                && r.get("peer_exited").and_then(Value::as_bool) != Some(true)
                && r["alive"].as_bool() != Some(false)
        };
        if !good(p) || !good(n) {
            spoilt += 1;
            continue;
        }
        let g = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        speed.push(g(p, "records_per_s") / g(n, "records_per_s"));
        cpu.push(g(n, "cpu_s_per_gb") / g(p, "cpu_s_per_gb"));
    }
    if speed.is_empty() {
        if spoilt > 0 {
            let _ = writeln!(out, "\ntargets (real tansu): no round where both peers drained ({spoilt} spoilt)");
        }
        return;
    }
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
    let _ = writeln!(
        out,
        "\ntargets (real tansu, {} round(s) with both peers drained{}; per round, then the median):",
        speed.len(),
        if spoilt > 0 { format!(", {spoilt} spoilt") } else { String::new() }
    );
    let _ = writeln!(
        out,
        "  records/s, mirrorproxy / librdkafka mirror:  {}  median {:.2}x (target >= 1.5x)",
        list(&speed),
        median(speed.clone())
    );
    let _ = writeln!(
        out,
        "  CPU-s per GB, librdkafka mirror / proxy:     {}  median {:.2}x (target >= 3x)",
        list(&cpu),
        median(cpu.clone())
    );
}

pub(crate) fn plots(out: &Path, results: &[Value]) -> Result<(), String> {
    use plotters::prelude::*;
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no DejaVuSans.ttf found (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font).map_err(|_| "cannot load font")?;
    let colors = [RED, BLUE, RGBColor(0, 150, 0), MAGENTA];
    let peers = ["mirrorproxy", "librdkafka-mirror", "tcp-relay"];
    // Throughput vs record size.
    let series: Vec<(&str, Vec<(f64, f64)>)> = peers
        .iter()
        .map(|p| {
            let mut pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| r["mode"] == "isolation" && r["peer"] == *p && r["codec"] == "none")
                .filter_map(|r| Some((r["size"].as_f64()?, r["mb_per_s"].as_f64()?)))
                .collect();
            pts.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            (*p, pts)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if !series.is_empty() {
        let path = out.join("throughput_vs_size.png");
        let root = BitMapBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let xmin = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(f64::MAX, f64::min);
        let xmax = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(0.0, f64::max);
        let ymax = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(0.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption("Isolation mode: throughput vs record size (uncompressed)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), 0.0..ymax.max(1.0))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("record value size (bytes, log)")
            .y_desc("MB/s through the process")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 5, c.filled()))).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    // Latency CDFs.
    let cdfs: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .filter_map(|r| {
            let l = r.get("latency_us")?;
            let pts = l["cdf"]
                .as_array()?
                .iter()
                .filter_map(|p| Some((p[1].as_f64()? / 1000.0, p[0].as_f64()? / 100.0)))
                .collect();
            Some((format!("{} {}", r["mode"].as_str()?, r["peer"].as_str()?), pts))
        })
        .collect();
    if !cdfs.is_empty() {
        let path = out.join("latency_cdf.png");
        let root = BitMapBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let xmax = cdfs.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(0.0, f64::max).max(1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption("End-to-end replication latency (CDF)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d((0.05..xmax * 1.2).log_scale(), 0.0..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("latency (ms, log)")
            .y_desc("fraction of records")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, pts)) in cdfs.iter().enumerate() {
            let c = colors[i % colors.len()];
            let pts: Vec<(f64, f64)> = pts.iter().map(|(x, y)| (x.max(0.05), *y)).collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(3)))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[allow(dead_code)]
pub(crate) fn _unused(_: &mut dyn Buf) {}
