//! Open-loop load: requests sent at a fixed rate whatever the answers take. A closed loop (wrk's
//! fixed connections) sends less when the server slows and so hides its queueing (coordinated
//! omission); here each latency counts from when its request was due, so a stall shows as the
//! queue it makes. Also what the bench's latency-over-time chart is drawn from.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bench::{BenchError, WrkReport, outcome_label};

/// One slice of a run's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Start of the slice, seconds since the run began (by when requests were due).
    pub at_s: f64,
    /// Requests due in the slice that were answered, per second.
    pub answered_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers that were not 200 with the expected body.
    pub unexpected: u64,
}

/// What an open-loop run measured.
#[derive(Debug, Clone, Serialize)]
pub struct OpenLoopReport {
    /// Requests per second asked for.
    pub rate: f64,
    /// Latency from when each request was due; `requests_per_s` is what was answered.
    pub load: WrkReport,
    /// Requests whose send started more than a millisecond after they were due (the load
    /// generator itself fell behind: the figure then understates the rate).
    pub late_sends: u64,
    /// The last request was due after the payloads ran out and went round again.
    pub payloads_exhausted: bool,
    pub timeline: Vec<Bucket>,
}

/// One request's fate.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    /// When it was due (sent, in a closed loop), seconds since the run began.
    pub(super) due_s: f64,
    pub(super) latency_ms: f64,
    pub(super) ok: bool,
    pub(super) socket_error: bool,
    /// What an unexpected answer said ([`outcome_label`]).
    pub(super) outcome: Option<String>,
}

/// Width of a timeline slice.
const BUCKET_S: f64 = 0.5;

/// POSTs `bodies` (cycled) to `url` at `rate` per second for `duration`; an answer is expected
/// when it is 200 and contains `expect`. Requests still unanswered 30 s after the end count as
/// socket errors.
pub async fn run(
    url: &str,
    bodies: &[String],
    expect: &str,
    rate: f64,
    duration: Duration,
) -> Result<OpenLoopReport, BenchError> {
    if bodies.is_empty() || rate.is_nan() || rate <= 0.0 {
        return Err(BenchError::Config(
            "an open loop needs payloads and a rate above 0".into(),
        ));
    }
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BenchError::Wrk(e.to_string()))?;
    let total = (rate * duration.as_secs_f64()).floor() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let mut late = 0u64;
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        if due.elapsed() > Duration::from_millis(1) {
            late += 1;
        }
        let due: Instant = due.into_std();
        let due_s = interval.as_secs_f64() * i as f64;
        let body = bodies[i % bodies.len()].clone();
        let (client, url, expect) = (client.clone(), url.to_owned(), expect.to_owned());
        tasks.push(tokio::spawn(async move {
            let answer = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let (ok, socket_error, outcome) = match answer {
                Ok(r) => {
                    let status = r.status();
                    match r.text().await {
                        Ok(text) if status == 200 && text.contains(&expect) => (true, false, None),
                        Ok(text) => (false, false, Some(outcome_label(status.as_u16(), &text))),
                        Err(_) => (false, true, None),
                    }
                }
                Err(_) => (false, true, None),
            };
            Sample {
                due_s,
                latency_ms: due.elapsed().as_secs_f64() * 1e3,
                ok,
                socket_error,
                outcome,
            }
        }));
    }
    let mut samples = Vec::with_capacity(total);
    for t in tasks {
        samples.push(t.await.map_err(|e| BenchError::Wrk(e.to_string()))?);
    }
    Ok(OpenLoopReport {
        rate,
        load: summary(&samples, duration.as_secs_f64()),
        late_sends: late,
        payloads_exhausted: total > bodies.len(),
        timeline: timeline(&samples, duration.as_secs_f64()),
    })
}

/// The nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted_latencies<'a>(samples: impl Iterator<Item = &'a Sample>) -> Vec<f64> {
    let mut v: Vec<f64> = samples.map(|s| s.latency_ms).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Samples as a report: counts, percentiles of the answered, unexpected answers by outcome.
pub(super) fn summary(samples: &[Sample], duration_s: f64) -> WrkReport {
    let answered = samples.iter().filter(|s| !s.socket_error);
    let lat = sorted_latencies(answered);
    WrkReport {
        requests: lat.len() as u64,
        duration_s,
        requests_per_s: lat.len() as f64 / duration_s.max(1e-9),
        p50_ms: percentile(&lat, 50.0),
        p90_ms: percentile(&lat, 90.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or(0.0),
        unexpected: samples.iter().filter(|s| !s.ok).count() as u64,
        socket_errors: samples.iter().filter(|s| s.socket_error).count() as u64,
        outcomes: samples.iter().filter_map(|s| s.outcome.clone()).fold(
            BTreeMap::new(),
            |mut all, o| {
                *all.entry(o).or_insert(0) += 1;
                all
            },
        ),
    }
}

fn timeline(samples: &[Sample], duration_s: f64) -> Vec<Bucket> {
    let n = (duration_s / BUCKET_S).ceil() as usize;
    (0..n)
        .map(|b| {
            let from = b as f64 * BUCKET_S;
            let inside: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.due_s >= from && s.due_s < from + BUCKET_S)
                .collect();
            let lat = sorted_latencies(inside.iter().copied().filter(|s| !s.socket_error));
            Bucket {
                at_s: from,
                answered_per_s: lat.len() as f64 / BUCKET_S,
                p50_ms: percentile(&lat, 50.0),
                p99_ms: percentile(&lat, 99.0),
                unexpected: inside.iter().filter(|s| !s.ok).count() as u64,
            }
        })
        .collect()
}

/// An SVG chart of a timeline: p50 and p99 latency (top) and answers per second (bottom).
pub fn svg(title: &str, timeline: &[Bucket]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 60.0;
    const GAP: f64 = 40.0;
    let end = timeline.last().map_or(1.0, |b| b.at_s + BUCKET_S);
    let x = |t: f64| LEFT + (t + BUCKET_S / 2.0) / end * (W - LEFT - 10.0);
    let max_lat = timeline.iter().map(|b| b.p99_ms).fold(1.0, f64::max) * 1.1;
    let max_rate = timeline
        .iter()
        .map(|b| b.answered_per_s)
        .fold(1.0, f64::max)
        * 1.1;
    let line = |top: f64, max: f64, value: &dyn Fn(&Bucket) -> f64, colour: &str| {
        let points: Vec<String> = timeline
            .iter()
            .map(|b| format!("{:.1},{:.1}", x(b.at_s), top + H - value(b) / max * H))
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        )
    };
    let axis = |top: f64, max: f64, unit: &str| {
        format!(
            "<line x1=\"{LEFT}\" y1=\"{top}\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#888\"/>\
             <line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\
             <text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{max:.0} {unit}</text>\
             <text x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">0</text>",
            b = top + H,
            r = W - 10.0,
            tx = LEFT - 4.0,
            ty = top + 10.0,
        )
    };
    let top2 = 30.0 + H + GAP;
    let escaped = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"13\">{escaped}</text>\
         {a1}{p50}{p99}<text x=\"{lx}\" y=\"42\" fill=\"#1f77b4\">p50</text><text x=\"{lx}\" y=\"56\" fill=\"#d62728\">p99</text>\
         {a2}{rate}<text x=\"{lx}\" y=\"{ry}\" fill=\"#2ca02c\">answered/s</text>\
         <text x=\"{mx}\" y=\"{xy}\" text-anchor=\"middle\">seconds (requests by when they were due): 0 – {end:.0}</text></svg>\n",
        h = top2 + H + 30.0,
        a1 = axis(30.0, max_lat, "ms"),
        p50 = line(30.0, max_lat, &|b| b.p50_ms, "#1f77b4"),
        p99 = line(30.0, max_lat, &|b| b.p99_ms, "#d62728"),
        a2 = axis(top2, max_rate, "/s"),
        rate = line(top2, max_rate, &|b| b.answered_per_s, "#2ca02c"),
        lx = W - 80.0,
        ry = top2 + 12.0,
        mx = (W + LEFT) / 2.0,
        xy = top2 + H + 20.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(due_s: f64, latency_ms: f64, ok: bool) -> Sample {
        Sample {
            due_s,
            latency_ms,
            ok,
            socket_error: false,
            outcome: (!ok)
                .then(|| "402 invalid_exact_evm_payload_authorization_valid_before".into()),
        }
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn a_stall_shows_in_its_slice_of_the_timeline() {
        // 1 s at 10/s; the requests due in the second half-second waited 300 ms.
        let samples: Vec<Sample> = (0..10)
            .map(|i| {
                let due = f64::from(i) / 10.0;
                sample(due, if due >= 0.5 { 300.0 } else { 2.0 }, i != 3)
            })
            .collect();
        let t = timeline(&samples, 1.0);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].p99_ms, t[1].p50_ms), (2.0, 300.0));
        assert_eq!((t[0].unexpected, t[1].unexpected), (1, 0));
        assert_eq!(t[0].answered_per_s, 10.0);
        let s = summary(&samples, 1.0);
        assert_eq!((s.requests, s.unexpected, s.max_ms), (10, 1, 300.0));
        assert_eq!(
            s.outcomes
                .get("402 invalid_exact_evm_payload_authorization_valid_before"),
            Some(&1)
        );
        let chart = svg("verify <500/s>", &t);
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        assert!(chart.contains("verify &lt;500/s&gt;"));
        assert_eq!(chart.matches("<polyline").count(), 3);
    }
}
