use super::*;

fn close(actual: f64, expected: f64, within: f64) {
    assert!(
        (actual - expected).abs() <= within,
        "{actual} is not within {within} of {expected}"
    );
}

/// Wikipedia, "Mann–Whitney U test", "Illustration of calculation methods": the tortoise
/// and the hare, six of each, finishing in the order T H H H H H T T T T T H. By hand:
/// the first tortoise beats all 6 hares and the other five beat only the last hare, so
/// U_T = 6 + 5·1 = 11; the first five hares each beat 5 tortoises, so U_H = 25; and
/// U_T + U_H = 36 = 6·6. Finishing positions as values (lower is first), a tortoise beats
/// a hare when the hare's position is higher, so U_T is the U of the hares.
#[test]
fn wikipedia_tortoise_and_hare() {
    let tortoises = [1.0, 7.0, 8.0, 9.0, 10.0, 11.0];
    let hares = [2.0, 3.0, 4.0, 5.0, 6.0, 12.0];
    assert_eq!(mann_whitney(&hares, &tortoises).unwrap().u, 11.0);
    assert_eq!(mann_whitney(&tortoises, &hares).unwrap().u, 25.0);
    // By hand: σ² = 6·6·13/12 = 39, z = (25 − 18 − 0.5)/√39 = 1.040833,
    // p = 2·(1 − Φ(1.040833)) = 0.297953 (Φ from Python's math.erfc).
    let t = mann_whitney(&tortoises, &hares).unwrap();
    close(t.z, 1.040_833, 1e-6);
    close(t.p, 0.297_953, 1e-6);
}

/// Published R output: `wilcox.test(mpg ~ am, data = mtcars)` prints "W = 42, p-value =
/// 0.001871" with the warning "cannot compute exact p-value with ties", i.e. the normal
/// approximation with tie and continuity corrections (R's defaults `exact = FALSE` under
/// ties, `correct = TRUE`). This output is reproduced in many R tutorials (e.g. STHDA's
/// "Unpaired Two-Samples Wilcoxon Test in R"). Data: R's `mtcars`, mpg by am
/// (0 = automatic, 19 cars; 1 = manual, 13 cars), in the data set's row order.
#[test]
fn r_mtcars_mpg_by_transmission() {
    let automatic = [
        21.4, 18.7, 18.1, 14.3, 24.4, 22.8, 19.2, 17.8, 16.4, 17.3, 15.2, 10.4, 10.4, 14.7, 21.5,
        15.5, 15.2, 13.3, 19.2,
    ];
    let manual = [
        21.0, 21.0, 22.8, 32.4, 30.4, 33.9, 27.3, 26.0, 30.4, 15.8, 19.7, 15.0, 21.4,
    ];
    let t = mann_whitney(&automatic, &manual).unwrap();
    assert_eq!(t.u, 42.0);
    close(t.p, 0.001_871, 1e-6);
    // Swapping the samples: U' = n₁n₂ − U = 247 − 42 = 205, the same p.
    let s = mann_whitney(&manual, &automatic).unwrap();
    assert_eq!(s.u, 205.0);
    close(s.p, t.p, 1e-12);
    close(s.z, -t.z, 1e-12);
}

/// R's own example in `?wilcox.test` (Hollander & Wolfe 1973, p. 69: permeability
/// constants of the human chorioamnion): `wilcox.test(x, y, alternative = "g")` prints
/// "W = 35, p-value = 0.1272" (exact, one-sided). No ties; for the two-sided normal
/// approximation by hand: σ² = 10·5·16/12 = 66.6667, z = (35 − 25 − 0.5)/8.164966 =
/// 1.163508, p = 2·(1 − Φ(z)) = 0.244624 (Φ from Python's math.erfc), near twice the exact
/// one-sided 0.1272 as it should be.
#[test]
fn r_hollander_wolfe_example() {
    let x = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46];
    let y = [1.15, 0.88, 0.90, 0.74, 1.21];
    let t = mann_whitney(&x, &y).unwrap();
    assert_eq!(t.u, 35.0);
    close(t.z, 1.163_508, 1e-6);
    close(t.p, 0.244_624, 1e-6);
}

/// Ties, by hand. x = 1 2 2 3 4, y = 2 3 5 6 7. Pairs x > y (ties count ½): 1 → 0;
/// each 2 → ½ (ties the y 2) = 1; 3 → 1 (over 2) + ½ (ties 3) = 1.5; 4 → 2; U = 4.5.
/// Tie groups: three 2s, two 3s: Σ(t³ − t) = 24 + 6 = 30. σ² = 25/12·(11 − 30/90) =
/// 22.2222, σ = 4.714045; z = (4.5 − 12.5 + 0.5)/σ = −1.590990; p = 2·Φ(z) = 0.111612.
#[test]
fn ties_by_hand() {
    let t = mann_whitney(&[1.0, 2.0, 2.0, 3.0, 4.0], &[2.0, 3.0, 5.0, 6.0, 7.0]).unwrap();
    assert_eq!(t.u, 4.5);
    close(t.z, -1.590_990, 1e-6);
    close(t.p, 0.111_612, 1e-6);
}

#[test]
fn normal_cdf_known_values() {
    // Φ(0) = 0.5, Φ(1.959964) = 0.975, Φ(−1) = 0.1586553 (standard tables).
    close(normal_cdf(0.0), 0.5, 1e-9);
    close(normal_cdf(1.959_964), 0.975, 2e-7);
    close(normal_cdf(-1.0), 0.158_655_25, 2e-7);
    close(normal_cdf(40.0), 1.0, 1e-12);
    close(normal_cdf(-40.0), 0.0, 1e-12);
}

#[test]
fn identical_and_all_tied_samples_give_p_one() {
    let a = [1.0, 2.0, 3.0, 4.0, 5.0];
    let t = mann_whitney(&a, &a).unwrap();
    assert_eq!(t.u, 12.5);
    close(t.p, 1.0, 1e-12);
    let t = mann_whitney(&[3.0; 4], &[3.0; 6]).unwrap();
    assert_eq!((t.u, t.z, t.p), (12.0, 0.0, 1.0));
}

#[test]
fn refuses_empty_and_non_finite_samples() {
    assert!(mann_whitney(&[], &[1.0]).is_err());
    let e = mann_whitney(&[1.0, f64::NAN], &[1.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("x sample 1 is NaN"), "{e}");
    assert!(mann_whitney(&[1.0], &[f64::INFINITY]).is_err());
    let judge = judge();
    let e = judge
        .judge(&[metric(
            Metric::ErrorRatio,
            vec![0.0; 10],
            vec![f64::NEG_INFINITY; 10],
        )])
        .unwrap_err()
        .to_string();
    assert!(e.contains("error_ratio canary sample 0 is -inf"), "{e}");
}

fn judge() -> Judge {
    Judge {
        alpha: 0.05,
        min_samples: 10,
        tolerance: 0.1,
        thresholds: Thresholds {
            max_error_ratio: Some(0.2),
            max_p99_ms: Some(800.0),
        },
    }
}

fn metric(metric: Metric, baseline: Vec<f64>, canary: Vec<f64>) -> MetricSamples {
    MetricSamples {
        metric,
        samples: Samples { baseline, canary },
    }
}

/// Deterministic spread samples around a centre.
fn around(centre: f64, spread: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| centre + spread * (((i * 7) % n) as f64 / n as f64 - 0.5))
        .collect()
}

#[test]
fn the_same_behaviour_continues() {
    let b = around(0.01, 0.004, 20);
    let j = judge()
        .judge(&[
            metric(Metric::ErrorRatio, b.clone(), b),
            metric(
                Metric::LatencyP99Ms,
                around(120.0, 30.0, 20),
                around(120.0, 30.0, 20),
            ),
        ])
        .unwrap();
    assert_eq!(j.verdict, Verdict::Continue);
    close(j.metrics[0].test.unwrap().p, 1.0, 1e-12);
}

#[test]
fn a_canary_with_clearly_more_errors_is_rolled_back() {
    let record = StepRecord {
        judge: judge(),
        metrics: vec![
            metric(
                Metric::ErrorRatio,
                around(0.01, 0.004, 20),
                around(0.05, 0.004, 20),
            ),
            metric(
                Metric::LatencyP99Ms,
                around(120.0, 30.0, 20),
                around(121.0, 30.0, 20),
            ),
        ],
        verdict: Verdict::Continue,
    };
    let j = record.judge.judge(&record.metrics).unwrap();
    let Verdict::Rollback { reason } = &j.verdict else {
        panic!("{:?}", j.verdict)
    };
    // Every canary sample is above every baseline sample: U = 20·20 = 400.
    assert!(
        reason.starts_with("error_ratio: canary worse than baseline (U = 400, p = "),
        "{reason}"
    );
    assert!(
        reason.ends_with("median 0.0499 vs 0.0099, mean 0.0499 vs 0.0099)"),
        "{reason}"
    );
    assert!(!reason.contains("latency"), "{reason}");
    // Replays: the same record gives the same verdict, every time.
    assert_eq!(recompute(&record).unwrap(), j.verdict);
    let stored = serde_json::to_string(&StepRecord {
        verdict: j.verdict.clone(),
        ..record
    })
    .unwrap();
    let back: StepRecord = serde_json::from_str(&stored).unwrap();
    assert_eq!(recompute(&back).unwrap(), back.verdict);
}

#[test]
fn a_better_canary_or_a_small_effect_continues() {
    // Lower errors on the canary: significant, but not worse.
    let j = judge()
        .judge(&[metric(
            Metric::ErrorRatio,
            around(0.05, 0.004, 20),
            around(0.01, 0.004, 20),
        )])
        .unwrap();
    assert_eq!(j.verdict, Verdict::Continue);
    // Worse at p < α but by 1 %, under the 10 % tolerance.
    let j = judge()
        .judge(&[metric(
            Metric::LatencyP99Ms,
            around(100.0, 0.5, 20),
            around(101.0, 0.5, 20),
        )])
        .unwrap();
    assert!(j.metrics[0].test.unwrap().p < 0.05);
    assert_eq!(j.verdict, Verdict::Continue);
}

#[test]
fn an_absolute_threshold_rolls_back() {
    let slow = around(900.0, 10.0, 12);
    let j = judge()
        .judge(&[metric(Metric::LatencyP99Ms, slow.clone(), slow)])
        .unwrap();
    let Verdict::Rollback { reason } = j.verdict else {
        panic!()
    };
    assert!(
        reason.starts_with("latency_p99_ms: canary median 899.583333 over the limit 800"),
        "{reason}"
    );
}

#[test]
fn too_few_samples_pause() {
    let j = judge()
        .judge(&[
            metric(
                Metric::ErrorRatio,
                around(0.01, 0.004, 20),
                around(0.5, 0.004, 4),
            ),
            metric(Metric::LatencyP99Ms, vec![], vec![]),
        ])
        .unwrap();
    assert_eq!(
        j.verdict,
        Verdict::Pause {
            reason: "error_ratio: not enough samples: 4 of 10; latency_p99_ms: not enough samples: 0 of 10".into()
        }
    );
    assert!(j.metrics[0].test.is_none());
    // A rollback of one metric wins over a pause of another.
    let j = judge()
        .judge(&[
            metric(Metric::LatencyP99Ms, vec![], vec![]),
            metric(
                Metric::ErrorRatio,
                around(0.01, 0.004, 20),
                around(0.3, 0.004, 20),
            ),
        ])
        .unwrap();
    assert!(matches!(j.verdict, Verdict::Rollback { .. }));
}

#[test]
fn refuses_a_bad_judge() {
    let m = [metric(Metric::ErrorRatio, vec![0.0], vec![0.0])];
    for bad in [
        Judge {
            alpha: 0.0,
            ..judge()
        },
        Judge {
            alpha: f64::NAN,
            ..judge()
        },
        Judge {
            min_samples: 0,
            ..judge()
        },
        Judge {
            tolerance: -1.0,
            ..judge()
        },
        Judge {
            thresholds: Thresholds {
                max_error_ratio: Some(f64::NAN),
                max_p99_ms: None,
            },
            ..judge()
        },
    ] {
        assert!(bad.judge(&m).is_err(), "{bad:?}");
    }
}

#[test]
fn swap_symmetry_over_many_inputs() {
    // Deterministic pseudo-random vectors with ties: swapping x and y gives the same p
    // and U' = n₁n₂ − U.
    let mut state = 0x2545_f491_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 20) as f64
    };
    for n in 1..30 {
        let x: Vec<f64> = (0..n).map(|_| next()).collect();
        let y: Vec<f64> = (0..(n % 7 + 1)).map(|_| next()).collect();
        let a = mann_whitney(&x, &y).unwrap();
        let b = mann_whitney(&y, &x).unwrap();
        close(a.p, b.p, 1e-12);
        close(a.u + b.u, (x.len() * y.len()) as f64, 1e-9);
        assert!((0.0..=1.0).contains(&a.p));
    }
}
