use super::*;

/// An exposition as a Go service instrumented with client_golang's `promhttp`
/// middleware writes it: `ok` 200s and `errors` 500s (the 500 series only once there is
/// one, as the library creates a label set on first use), and the latency histogram
/// with `counts` per `le` (cumulative, `+Inf` last), split over two handlers.
fn exposition(ok: u64, errors: u64, counts: &[(&str, u64)]) -> String {
    let mut text = String::from(
        "# HELP http_requests_total Total number of HTTP requests.\n# TYPE http_requests_total counter\n",
    );
    text.push_str(&format!(
        "http_requests_total{{code=\"200\",method=\"get\"}} {ok}\n"
    ));
    if errors > 0 {
        text.push_str(&format!(
            "http_requests_total{{code=\"500\",method=\"get\"}} {errors}\n"
        ));
    }
    text.push_str("# HELP http_request_duration_seconds Request latency.\n# TYPE http_request_duration_seconds histogram\n");
    for handler in ["a", "b"] {
        for (le, count) in counts {
            // Half of each bucket on each handler (odd counts go to `a`).
            let share = if handler == "a" {
                count - count / 2
            } else {
                count / 2
            };
            text.push_str(&format!(
                "http_request_duration_seconds_bucket{{handler=\"{handler}\",le=\"{le}\"}} {share}\n"
            ));
        }
    }
    text
}

fn snapshot(ok: u64, errors: u64, counts: &[(&str, u64)]) -> Snapshot {
    Snapshot::read(&exposition(ok, errors, counts), &Names::default())
}

fn fast(n: u64) -> Vec<(&'static str, u64)> {
    vec![("0.005", n), ("0.01", n), ("0.1", n), ("+Inf", n)]
}

#[test]
fn the_names_match_counters_with_or_without_total_and_the_histogram_buckets() {
    let names = Names::default();
    assert!(names.is_requests("http_requests_total"));
    assert!(!names.is_requests("http_requests_created"));
    assert!(names.is_bucket("http_request_duration_seconds_bucket"));
    assert!(!names.is_bucket("http_request_duration_seconds_count"));
    // An OpenMetrics family name: its samples end in `_total`.
    let family = Names::from_query("requests=myapp_requests").unwrap();
    assert!(family.is_requests("myapp_requests_total"));
    assert!(family.is_requests("myapp_requests"));
    assert!(!family.is_requests("myapp_requests_created"));
    let total = Names::from_query("requests=myapp_requests_total").unwrap();
    assert!(!total.is_requests("myapp_requests_total_total"));
    assert_eq!(total.latency, "http_request_duration_seconds");
}

#[test]
fn a_snapshot_keeps_the_two_metrics_and_counts_what_is_not_usable() {
    let text = format!(
        "{}process_cpu_seconds_total 12.5\nhttp_requests_total{{code=\"503\"}} NaN\nhttp_requests_total{{code=\"502\"}} -1\nhttp_request_duration_seconds_bucket{{handler=\"c\"}} 4\nhttp_request_duration_seconds_bucket{{le=\"soon\"}} 4\nnot a line\n",
        exposition(10, 2, &fast(12))
    );
    let read = Snapshot::read(&text, &Names::default());
    assert_eq!(read.requests.len(), 2, "{read:?}");
    assert_eq!(read.buckets.len(), 8, "{read:?}");
    assert_eq!(read.skipped, 5, "{read:?}");
    assert!(
        read.first_skipped
            .as_deref()
            .is_some_and(|why| why.starts_with("line ")),
        "{read:?}"
    );
}

#[test]
fn a_counter_grows_by_the_difference_or_by_its_value_after_a_reset() {
    assert_eq!(increase(Some(10.0), 15.0), 5.0);
    assert_eq!(increase(Some(10.0), 10.0), 0.0);
    // The process restarted: 3 since then.
    assert_eq!(increase(Some(10.0), 3.0), 3.0);
    // The series was not there the round before.
    assert_eq!(increase(None, 2.0), 2.0);
}

#[test]
fn a_delta_counts_5xx_by_code_or_status_and_sums_buckets_per_bound() {
    let before = snapshot(100, 0, &fast(100));
    let after = Snapshot::read(
        &format!(
            "{}http_requests_total{{status=\"503 Service Unavailable\",path=\"/\"}} 4\nhttp_requests_total{{status=\"404\"}} 6\n",
            exposition(180, 10, &[("0.005", 150), ("0.01", 190), ("0.1", 200), ("+Inf", 200)])
        ),
        &Names::default(),
    );
    let mut delta = Delta::default();
    delta.add(&before, &after);
    // 80 more 200s, 10 new 500s, 4 new 503s and 6 new 404s.
    assert_eq!(delta.requests, 100.0);
    assert_eq!(delta.errors, 14.0);
    assert_eq!(delta.error_ratio(), Some(0.14));
    // Δ buckets: 50 ≤ 5 ms, 90 ≤ 10 ms, 100 ≤ 100 ms. Rank 99 is in (0.01, 0.1] with 10
    // there: 0.01 + 0.09 × 9/10 = 0.091 s.
    let p99 = delta.p99_ms().unwrap();
    assert!((p99 - 91.0).abs() < 1e-9, "{p99}");
    // Equal latencies give equal samples whatever the count, so the judge's test sees
    // them tied.
    let p99s: Vec<f64> = (1..=300)
        .map(|n| {
            let n = f64::from(n);
            Delta {
                requests: n,
                errors: 0.0,
                buckets: vec![(0.005, n), (f64::INFINITY, n)],
            }
            .p99_ms()
            .unwrap()
        })
        .collect();
    assert!(p99s.iter().all(|ms| *ms == 4.95), "{p99s:?}");
    assert_eq!(Delta::default().error_ratio(), None);
    assert_eq!(Delta::default().p99_ms(), None);
}

#[test]
fn a_side_samples_from_its_second_complete_scrape_summed_over_its_addresses() {
    let mut side = Side::default();
    let two = |a: Snapshot, b: Snapshot| -> Vec<Scrape> {
        vec![("10.0.0.1:80".into(), Ok(a)), ("10.0.0.2:80".into(), Ok(b))]
    };
    // The first scrape sets the baseline.
    let round = side.record(two(
        snapshot(100, 0, &fast(100)),
        snapshot(50, 0, &fast(50)),
    ));
    assert_eq!(round, SideRound::default());
    // 30 + 20 more requests, 5 of them 500s (a series new since the baseline), all fast.
    let round = side.record(two(
        snapshot(125, 5, &fast(130)),
        snapshot(70, 0, &fast(70)),
    ));
    assert_eq!(round.requests, 50);
    assert_eq!(round.error_ratio, Some(0.1));
    assert!((round.p99_ms.unwrap() - 4.95).abs() < 1e-9, "{round:?}");
    // No traffic: no sample.
    let round = side.record(two(
        snapshot(125, 5, &fast(130)),
        snapshot(70, 0, &fast(70)),
    ));
    assert_eq!(round, SideRound::default());
    // One address fails: no sample, and the base stays.
    let round = side.record(vec![
        ("10.0.0.1:80".into(), Ok(snapshot(200, 5, &fast(205)))),
        ("10.0.0.2:80".into(), Err("timed out".into())),
    ]);
    assert_eq!(round, SideRound::default());
    // The second address restarted meanwhile: its 10 requests count whole; the first
    // grew by 75 over both rounds.
    let round = side.record(two(
        snapshot(200, 5, &fast(205)),
        snapshot(10, 0, &fast(10)),
    ));
    assert_eq!(round.requests, 85);
    assert_eq!(round.error_ratio, Some(0.0));
    let detail = side.detail();
    assert_eq!(detail["scrapes_ok"], 9);
    assert_eq!(detail["scrapes_failed"], 1);
    assert_eq!(detail["last_failure"], "10.0.0.2:80: timed out");
    assert_eq!(detail["rounds_sampled"], 2);
    assert_eq!(detail["rounds_without_requests"], 1);
    assert_eq!(detail["rounds_with_failed_scrapes"], 1);
    assert_eq!(detail["requests"], 135);
    assert_eq!(detail["errors"], 5);
    assert_eq!(
        detail["addresses"],
        serde_json::json!(["10.0.0.1:80", "10.0.0.2:80"])
    );
}

#[test]
fn a_side_without_the_histogram_gives_error_ratios_only() {
    let mut side = Side::default();
    let only_requests = |ok: u64| -> Vec<Scrape> {
        let text = format!("http_requests_total{{code=\"200\"}} {ok}\n");
        vec![("a:1".into(), Ok(Snapshot::read(&text, &Names::default())))]
    };
    side.record(only_requests(1));
    let round = side.record(only_requests(11));
    assert_eq!(round.error_ratio, Some(0.0));
    assert_eq!(round.p99_ms, None);
    assert_eq!(side.detail()["rounds_without_latency"], 1);
}

#[test]
fn overridden_names_are_read_instead() {
    let names = Names::from_query("requests=myapp_requests&latency=myapp_latency_seconds").unwrap();
    let text = |n: u64| {
        format!(
            "# TYPE myapp_requests counter\nmyapp_requests_total{{code=\"500\"}} {n}\nmyapp_requests_created{{code=\"500\"}} 1.7e9\nhttp_requests_total{{code=\"200\"}} 99999\nmyapp_latency_seconds_bucket{{le=\"0.5\"}} {n}\nmyapp_latency_seconds_bucket{{le=\"+Inf\"}} {n}\n# EOF\n"
        )
    };
    let mut side = Side::default();
    side.record(vec![("a:1".into(), Ok(Snapshot::read(&text(1), &names)))]);
    let round = side.record(vec![("a:1".into(), Ok(Snapshot::read(&text(3), &names)))]);
    assert_eq!(round.requests, 2);
    assert_eq!(round.error_ratio, Some(1.0));
    assert!((round.p99_ms.unwrap() - 495.0).abs() < 1e-9, "{round:?}");
}
